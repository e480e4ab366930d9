"""The torch-free pipeline on tiny exported models: runner, stages, segmentation, histopathology.

The models are trained for one epoch on synthetic data and exported once per session
(``tests.training.tiny_runs``); torch is needed to make them, not to run them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")

from imaging import NotAnImageError, decode
from imaging.preprocess import preprocess_decoded
from models_registry.card import Activation
from models_registry.errors import ModelIntegrityError
from models_registry.registry import Registry
from models_registry.store import DirectoryStore
from service.errors import UnknownStageError
from service.inference import (
    Aggregate,
    Analysis,
    AnalysisResult,
    ModelStageMismatchError,
    NoModelForStageError,
    RunnerOptions,
    Stage,
    TileOptions,
    WrongStageError,
    analyse,
    analyse_each,
    check_input,
    clear_runners,
    get_runner,
    pin_model,
)
from service.inference.result import SCHEMA_PATH, render_schema
from service.inference.runner import CPU_PROVIDER, activate_map, default_providers
from tests.imaging import dicom_factory as dcm
from tests.training import tiny_runs
from training.data.synthetic_draw import he_patch, ultrasound_background


def check_result_json(text: str) -> dict[str, Any]:
    """The JSON parses as ``AnalysisResult`` and its keys follow the committed schema."""
    data: dict[str, Any] = json.loads(text)
    AnalysisResult.model_validate(data)
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert set(schema["required"]) <= set(data)
    assert set(data) <= set(schema["properties"])
    return data


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 grey or RGB -> PNG bytes."""
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    return bytes(cv2.imencode(".png", pixels)[1])


def ultrasound_png(seed: int, shape: tuple[int, int] = (120, 160)) -> bytes:
    grey = ultrasound_background(np.random.default_rng(seed), shape)  # (H, W) in [0, 1]
    return png_bytes(np.rint(grey * 255).astype(np.uint8))


def he_tile(shape: tuple[int, int], background_cols: int = 0, seed: int = 0) -> np.ndarray:
    """An H&E-like RGB tile; the last ``background_cols`` columns white glass."""
    tile = he_patch(np.random.default_rng(seed), shape, tumour=True)  # (H, W, 3) uint8
    if background_cols:
        tile[:, -background_cols:] = 245
    return tile


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    clear_runners()
    return tiny_runs.registry(tmp_path_factory)


def test_schema_file_is_current() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render_schema()


def test_runner_is_created_once_per_process(registry: Registry) -> None:
    first = get_runner("us-tiny", registry)
    again = get_runner("us-tiny@production", registry)
    assert again is first
    assert CPU_PROVIDER in first.providers and CPU_PROVIDER in default_providers()
    threads = get_runner("us-tiny", registry, RunnerOptions(intra_op_threads=1))
    assert threads is not first and threads.ref == first.ref == "us-tiny@1"


def test_an_open_pinned_version_is_served_without_a_store_look_up(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = get_runner("us-tiny@1", registry)

    def no_look_up(ref: str) -> object:
        raise AssertionError(f"the store was asked for {ref}")

    monkeypatch.setattr(registry, "resolve", no_look_up)
    assert get_runner("us-tiny@1", registry) is first
    with pytest.raises(AssertionError, match="us-tiny@production"):
        get_runner("us-tiny@production", registry)  # an alias may have moved: looked up


def test_service_sessions_do_not_spin(registry: Registry) -> None:
    """The service turns ONNX Runtime's spin-waiting off unless the operator turns it on."""
    from models_registry.runtime import OrtSession
    from service.config import Settings
    from service.jobs.execute import runner_options

    entry = "session.intra_op.allow_spinning"
    ort = Settings(runtime="onnxruntime")
    quiet = get_runner("us-tiny", registry, runner_options(ort))
    assert isinstance(quiet.session, OrtSession)
    assert quiet.session.session.get_session_options().get_session_config_entry(entry) == "0"
    spinning = get_runner(
        "us-tiny", registry, runner_options(ort.model_copy(update={"ort_spinning": True}))
    )
    assert spinning is not quiet and isinstance(spinning.session, OrtSession)
    with pytest.raises(Exception, match="does not have configuration"):  # ORT's default: spin
        spinning.session.session.get_session_options().get_session_config_entry(entry)


def test_sessions_spread_overlapping_runs_where_the_process_runs_jobs_at_once(
    registry: Registry,
) -> None:
    """In process (two job threads) and a queue worker with two lanes (both the default),
    OpenVINO keeps its one-core-per-run form; a worker with one lane runs one job at a time and
    does not."""
    from models_registry.runtime import OpenVinoSession
    from service.config import Settings
    from service.jobs.execute import concurrent_runs, runner_options

    in_process = Settings(runtime="openvino")
    queued = Settings(runtime="openvino", redis_url="redis://127.0.0.1:6379/15")
    one_lane = queued.model_copy(update={"worker_lanes": 1})
    assert concurrent_runs(in_process) == 2 == runner_options(in_process).concurrent
    assert concurrent_runs(queued) == 2 == runner_options(queued).concurrent
    assert concurrent_runs(one_lane) == 1 == runner_options(one_lane).concurrent
    session = get_runner("us-tiny", registry, runner_options(in_process)).session
    assert isinstance(session, OpenVinoSession)
    assert session.spread == (len(os.sched_getaffinity(0)) > 1)
    alone = get_runner("us-tiny", registry, runner_options(one_lane)).session
    assert isinstance(alone, OpenVinoSession) and not alone.spread


def test_ultrasound_batch_gives_masks_at_original_size(registry: Registry) -> None:
    shapes = [(120, 160), (96, 130), (150, 100)]
    inputs = [ultrasound_png(seed, shape) for seed, shape in enumerate(shapes)]
    analyses = analyse("ultrasound", inputs, registry=registry)
    assert len(analyses) == 3
    for analysis, shape in zip(analyses, shapes, strict=True):
        result = analysis.result
        assert analysis.mask.shape == shape and analysis.mask.dtype == np.uint8
        assert set(np.unique(analysis.mask)) <= {0, 255}
        assert analysis.overlay.shape == (*shape, 3)
        assert result.batch_size == 3 and result.model.ref == "us-tiny@1"
        assert (result.mask.rows, result.mask.columns) == shape
        assert result.mask.total_area_px == int((analysis.mask > 0).sum())
        assert result.malignancy is not None and result.malignancy.calibrated
        assert "Not for clinical use" in result.disclaimer
        check_result_json(result.model_dump_json())


def test_checked_inputs_and_a_pinned_card_give_the_same_analysis(registry: Registry) -> None:
    """In process, a job analyses the images its submission check made, on the card it pinned:
    the same results, and the images are not decoded again (the check's decode time stands)."""
    inputs = [ultrasound_png(seed) for seed in range(2)]
    fresh = analyse(Stage.ULTRASOUND, inputs, registry=registry)
    card = pin_model(Stage.ULTRASOUND, registry)
    policy = card.preprocess_config().frame_policy
    checked = [check_input(Stage.ULTRASOUND, data, policy, 10**8) for data in inputs]
    again = analyse_each(Stage.ULTRASOUND, checked, registry=registry, model_ref=card)
    for a, b, one in zip(fresh, again, checked, strict=True):
        assert isinstance(b, Analysis)
        ours, theirs = a.result.model_dump(), b.result.model_dump()
        assert ours.pop("timings_ms") and theirs.pop("timings_ms")["decode"] == one.decode_ms
        assert ours == theirs and np.array_equal(a.mask, b.mask)
        assert np.array_equal(a.overlay, b.overlay)
    mammography_card = card.model_copy(update={"stage": Stage.MAMMOGRAPHY})
    with pytest.raises(ModelStageMismatchError):
        analyse(Stage.ULTRASOUND, inputs, registry=registry, model_ref=mammography_card)


def test_an_unknown_stage_name_is_the_routes_404(registry: Registry) -> None:
    with pytest.raises(UnknownStageError) as caught:
        analyse("dermatology", [ultrasound_png(1)], registry=registry)
    assert caught.value.http_status == 404 and "valid stages" in caught.value.message


def test_malignancy_is_the_calibrated_onnx_output(registry: Registry) -> None:
    data = ultrasound_png(7)
    result = analyse("ultrasound", [data], registry=registry)[0].result
    runner = get_runner("us-tiny", registry)
    chw, _, _ = preprocess_decoded(decode(data), runner.card.preprocess_config())
    logit = float(runner.session.run(["malignancy_logit"], {"image": chw[None]})[0][0, 0])
    expected = 1.0 / (1.0 + np.exp(-logit / runner.card.calibration.temperature))
    assert result.malignancy is not None
    assert result.malignancy.probability == pytest.approx(expected, abs=1e-5)
    assert result.malignancy.temperature == runner.card.calibration.temperature


def test_mask_maps_are_the_onnx_logits_activated_in_float32(registry: Registry) -> None:
    """The runner's mask is the logistic of the model's mask logits, as float32 (computed in
    float32: float64 cost eight times as long), equal to float64's within one float32 step, and
    saturating without overflow or NaN at logits of any size."""
    runner = get_runner("us-tiny", registry)
    chw, _, _ = preprocess_decoded(decode(ultrasound_png(7)), runner.card.preprocess_config())
    outputs = runner.run(chw[None])
    mask = runner.mask(outputs)
    assert mask is not None and mask.dtype == np.float32 and mask.shape == (1, *chw.shape[1:])
    expected = 1.0 / (1.0 + np.exp(-outputs["mask_logits"][:, 0].astype(np.float64)))
    np.testing.assert_allclose(mask, expected, rtol=0, atol=1.2e-7)
    extreme = np.array([[[[-1e4, -90.0, 0.0, 90.0, 1e4]]]], np.float32)
    probs = activate_map(extreme, Activation.SIGMOID, 0.7)
    assert probs.dtype == np.float32 and probs.shape == (1, 1, 5)
    assert probs[0, 0].tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]


def test_multiframe_dicom_records_frame_and_spacing_without_phi(registry: Registry) -> None:
    ds, _ = dcm.multiframe_ultrasound(frames=3, rows=64, columns=80)
    analysis = analyse("ultrasound", [dcm.to_bytes(ds)], registry=registry)[0]
    result = analysis.result
    assert (result.input.frames, result.input.frame_index) == (3, 0)
    assert result.input.pixel_spacing_mm == pytest.approx((0.15, 0.2))
    assert any("multi-frame" in w for w in result.warnings)
    assert analysis.mask.shape == (64, 80)
    text = result.model_dump_json()
    assert not any(marker in text for marker in dcm.PHI_MARKERS)
    assert ds.StudyInstanceUID not in text


def test_fp16_variant_runs_and_names_its_file(registry: Registry) -> None:
    card = registry.card("us-tiny")
    result = analyse(
        "ultrasound", [ultrasound_png(1)], registry=registry, options=RunnerOptions(fp16=True)
    )[0].result
    assert result.model.fp16 and card.onnx.fp16 is not None
    assert result.model.sha256 == card.onnx.fp16.sha256


@pytest.mark.parametrize(
    ("stage", "make"),
    [
        ("ultrasound", lambda: dcm.to_bytes(dcm.mammogram(rows=256, columns=200)[0])),
        ("mammography", lambda: png_bytes(he_tile((50, 50)))),
        ("mammography", lambda: png_bytes(he_tile((300, 400)))),
        ("mammography", lambda: dcm.to_bytes(dcm.multiframe_ultrasound(rows=200, columns=200)[0])),
        ("histopathology", lambda: ultrasound_png(3, (300, 300))),
        ("histopathology", lambda: dcm.to_bytes(dcm.mammogram(rows=256, columns=200)[0])),
        ("ultrasound", lambda: png_bytes(he_tile((200, 300)))),
    ],
)
def test_wrong_stage_is_refused(registry: Registry, stage: str, make: Any) -> None:
    with pytest.raises(WrongStageError) as caught:
        analyse(stage, [make()], registry=registry)
    assert caught.value.code == "wrong_stage" and caught.value.http_status == 422
    assert stage in caught.value.message


@pytest.mark.parametrize("kind", ["sr", "seg"])
def test_non_image_dicom_is_not_an_image(registry: Registry, kind: str) -> None:
    with pytest.raises(NotAnImageError) as caught:
        analyse("ultrasound", [dcm.to_bytes(dcm.non_image(kind))], registry=registry)
    assert caught.value.code == "not_an_image"


def test_analyse_each_keeps_errors_in_place(registry: Registry) -> None:
    inputs = [ultrasound_png(1), b"not an image", png_bytes(he_tile((50, 50))), ultrasound_png(2)]
    outcomes = analyse_each("ultrasound", inputs, registry=registry)
    codes = [getattr(o, "code", "ok") for o in outcomes]
    assert codes == ["ok", "unrecognised_format", "wrong_stage", "ok"]
    assert outcomes[0].result.batch_size == 2  # type: ignore[union-attr]


def test_model_of_another_stage_is_refused(registry: Registry) -> None:
    with pytest.raises(ModelStageMismatchError):
        analyse("mammography", [ultrasound_png(1)], registry=registry, model_ref="us-tiny")


def test_no_model_for_stage(tmp_path: Path) -> None:
    with pytest.raises(NoModelForStageError) as caught:
        analyse("ultrasound", [ultrasound_png(1)], registry=Registry([tmp_path / "empty"]))
    assert caught.value.code == "no_model_for_stage"


def test_tampered_model_is_refused(registry: Registry, tmp_path: Path) -> None:
    source = registry.store_of("us-tiny")
    assert isinstance(source, DirectoryStore)
    shutil.copytree(source.root / "us-tiny", tmp_path / "us-tiny")
    onnx_file = tmp_path / "us-tiny" / "1" / "model.onnx"
    onnx_file.chmod(0o644)
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx_file.write_bytes(bytes(data))
    clear_runners()
    with pytest.raises(ModelIntegrityError) as caught:
        analyse("ultrasound", [ultrasound_png(1)], registry=Registry([tmp_path]))
    assert caught.value.code == "model_integrity"


def test_histopathology_single_and_many_patches(registry: Registry) -> None:
    patches = [png_bytes(he_tile((50, 50), seed=s)) for s in range(5)] + [
        png_bytes(he_tile((50, 36), seed=9))  # an IDC edge patch
    ]
    analyses = analyse("histopathology", patches, registry=registry)
    assert len(analyses) == 6
    for analysis in analyses:
        result = analysis.result
        histology = result.histopathology
        assert histology is not None and histology.grid is None and len(histology.patches) == 1
        assert result.batch_size == 6 and result.malignancy is not None
        assert result.malignancy.probability == pytest.approx(histology.patches[0].probability)
        assert result.malignancy.label in {"non_idc", "idc"}
        assert analysis.overlay.shape == (*analysis.mask.shape, 3)
        check_result_json(result.model_dump_json())


def test_histopathology_large_tile_is_tiled_with_heatmap(registry: Registry) -> None:
    tile = he_tile((200, 300), background_cols=110)
    analysis = analyse("histopathology", [png_bytes(tile)], registry=registry)[0]
    histology = analysis.result.histopathology
    assert histology is not None and histology.grid is not None and histology.heatmap is not None
    grid = histology.grid
    assert grid.window == (50, 50) and grid.stride == (50, 50)
    assert grid.windows == 4 * 6 and grid.skipped_background == 4 * 2
    assert grid.classified == len(histology.patches) == 16
    probs = sorted((p.probability for p in histology.patches), reverse=True)
    assert analysis.result.malignancy is not None
    assert analysis.result.malignancy.probability == pytest.approx(np.mean(probs[:3]), abs=1e-5)
    assert analysis.mask.shape == (200, 300) and analysis.overlay.shape == (200, 300, 3)
    assert (analysis.overlay[:, -100:] == tile[:, -100:]).all()  # background left untouched
    maximum = analyse(
        "histopathology",
        [png_bytes(tile)],
        registry=registry,
        tiles=TileOptions(aggregate=Aggregate.MAX, overlap=0.5),
    )[0].result
    assert maximum.histopathology is not None and maximum.histopathology.grid is not None
    assert maximum.histopathology.grid.stride == (25, 25)
    assert maximum.malignancy is not None
    assert maximum.malignancy.probability == pytest.approx(
        max(p.probability for p in maximum.histopathology.patches), abs=1e-6
    )


def test_histopathology_all_background_has_no_score(registry: Registry) -> None:
    blank = np.full((200, 200, 3), 240, np.uint8)
    blank[::7, ::7] = (200, 150, 190)  # a few stained specks: still colour, still background
    result = analyse("histopathology", [png_bytes(blank)], registry=registry)[0].result
    assert result.malignancy is None
    assert any("no tissue" in w for w in result.warnings)


@pytest.mark.realdata
def test_real_images_through_every_stage(registry: Registry, shared_data: Path) -> None:
    busi = shared_data / "busi" / "Dataset_BUSI_with_GT"
    idc = sorted((shared_data / "idc" / "IDC_regular_ps50_idx5").glob("*/1/*.png"))[:4]
    dicom = shared_data / "dicom"
    cases = {
        "ultrasound": [busi / "malignant" / "malignant (1).png", dicom / "US1_UNCR.dcm"],
        "mammography": [
            shared_data / "mammography" / "mini-mias" / "mdb002.png",
            dicom / "MG_Explicit_Little.dcm",
        ],
        "histopathology": idc,
    }
    for stage, paths in cases.items():
        for path, analysis in zip(paths, analyse(stage, paths, registry=registry), strict=True):
            result = analysis.result
            assert analysis.mask.shape == (result.input.rows, result.input.columns), path.name
            check_result_json(result.model_dump_json())
    mg_spacing = analyse("mammography", [cases["mammography"][1]], registry=registry)[0]
    assert mg_spacing.result.input.pixel_spacing_mm == (0.25, 0.25)


@pytest.mark.realdata
def test_real_wrong_stage_inputs(registry: Registry, shared_data: Path) -> None:
    patch = next((shared_data / "idc" / "IDC_regular_ps50_idx5").glob("*/0/*.png"))
    for stage, path in [
        ("ultrasound", shared_data / "dicom" / "MG_Explicit_Little.dcm"),
        ("mammography", shared_data / "dicom" / "sm_image.dcm"),
        ("mammography", patch),
        ("histopathology", shared_data / "mammography" / "mini-mias" / "mdb002.png"),
    ]:
        with pytest.raises(WrongStageError):
            analyse(stage, [path], registry=registry)
    seg = shared_data / "dicom" / "seg_image_sm_dots.dcm"
    with pytest.raises(NotAnImageError):
        analyse("histopathology", [seg], registry=registry)


def test_lesion_weighted_malignancy_lets_the_likely_lesion_pixels_speak() -> None:
    """``Calibration.image_malignancy = lesion_weighted``: the image's malignancy is the lesion
    malignancy map averaged with the lesion probabilities as weights; no lesion probability at
    all keeps the image head's value."""
    from service.inference.pipeline import lesion_weighted_malignancy

    mask = np.zeros((8, 8), np.float32)
    mask[2:4, 2:4] = 1.0  # a sure lesion of 4 pixels
    mask[6, 6] = 0.5  # a doubtful pixel
    lesion_map = np.full((8, 8), 0.1, np.float32)
    lesion_map[2:4, 2:4] = 0.9
    value = lesion_weighted_malignancy(mask, lesion_map, fallback=0.3)
    assert value == pytest.approx((4 * 0.9 + 0.5 * 0.1) / 4.5)
    assert lesion_weighted_malignancy(np.zeros((8, 8), np.float32), lesion_map, 0.3) == 0.3
    assert lesion_weighted_malignancy(mask, None, 0.3) == 0.3


def test_a_display_image_is_kept_raw_up_to_its_limit_and_as_png_above() -> None:
    from service.inference import render

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    for image in (grey, rgb):
        packed = render.pack_display(image)
        assert not packed.startswith(b"\x89PNG") and len(packed) < image.nbytes + 32
        assert np.array_equal(render.unpack_display(packed), image)
    assert np.array_equal(render.unpack_display(render.encode_png(rgb)), rgb)  # stored before
    big = np.zeros((2100, 2100), np.uint8)  # 4.4 MB: above RAW_DISPLAY_MAX_BYTES
    big[500:900, 700:1000] = 200
    packed = render.pack_display(big)
    assert packed.startswith(b"\x89PNG") and len(packed) < big.nbytes // 100
    assert np.array_equal(render.unpack_display(packed), big)
    with pytest.raises(ValueError, match="not a display image"):
        render.unpack_display(render.pack_display(grey)[:-1])
    with pytest.raises(ValueError, match="uint8"):
        render.pack_display(grey.astype(np.float32))
