"""Histopathology inputs: RGB patches of any size are analysed, little tissue is a ``low_tissue``
warning, and only a grey image (a radiograph) is refused with ``wrong_stage``.

Real IDC edge patches (smaller than 50 x 50) and a real mini-MIAS radiograph where the data are
present; generated patches otherwise. The tiny exported models of ``tests.training.tiny_runs``
run the whole torch-free pipeline (torch only makes the model).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")

from imaging import decode
from imaging.preprocess import normalise, prepare
from models_registry.registry import Registry
from models_registry.store import DirectoryStore
from service.inference import WrongStageError, analyse, clear_runners
from service.inference import histopathology as histo
from service.inference.stages import STAGE_RULES, Stage, check_stage, chroma
from tests.imaging.test_preprocess_pad import PAD_IMAGENET
from tests.training import tiny_runs
from training.data.synthetic_draw import he_patch


def _png(image: np.ndarray) -> bytes:
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    return bytes(cv2.imencode(".png", pixels)[1])


def _low_tissue(warnings: list[str]) -> bool:
    return any(w.startswith(f"{histo.LOW_TISSUE}:") for w in warnings)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """A store with the tiny histopathology model only (the other stages are not needed)."""
    clear_runners()
    result = tiny_runs.exported("histopathology", tmp_path_factory)
    reg = Registry([DirectoryStore(tmp_path_factory.mktemp("histo-store"))])
    reg.register("idc-tiny", result.onnx_path, result.draft, alias="production")
    return reg


def _edge_patches(shared_data: Path) -> list[Path]:
    found = []
    for path in sorted((shared_data / "idc" / "IDC_regular_ps50_idx5").glob("*/*/*.png")):
        header = path.read_bytes()[16:24]  # PNG IHDR: width, height
        if (int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")) != (50, 50):
            found.append(path)
    if not found:
        pytest.skip("no IDC edge patch (smaller than 50x50) under ../shared/data/idc")
    return found


def test_the_stage_rule_is_the_histopathology_modules() -> None:
    assert STAGE_RULES[Stage.HISTOPATHOLOGY] is histo.histopathology_rule


@pytest.mark.realdata
def test_real_idc_edge_patches_are_analysed(registry: Registry, shared_data: Path) -> None:
    paths = _edge_patches(shared_data)
    analyses = analyse("histopathology", paths, registry=registry)
    for path, analysis in zip(paths, analyses, strict=True):
        result = analysis.result
        assert result.malignancy is not None, path.name
        assert (result.input.rows, result.input.columns) == decode(path).display(0).shape[:2]
        facts = histo.tissue_facts(decode(path).display(0))
        assert _low_tissue(result.warnings) == facts.low_tissue, path.name


@pytest.mark.realdata
def test_a_pale_13x50_edge_patch_is_analysed_and_a_mostly_white_one_warned(
    registry: Registry, shared_data: Path
) -> None:
    paths = _edge_patches(shared_data)
    shapes = {p: decode(p).display(0) for p in paths}
    thin = [p for p, d in shapes.items() if d.shape[:2] == (13, 50)]
    white = [p for p, d in shapes.items() if histo.tissue_facts(d).white_fraction >= 0.8]
    if not thin or not white:
        pytest.skip("the data lack a 13x50 edge patch or a mostly white one")
    thin_result, white_result = (
        a.result for a in analyse("histopathology", [thin[0], white[0]], registry=registry)
    )
    assert thin_result.malignancy is not None and not _low_tissue(thin_result.warnings)
    assert white_result.malignancy is not None and _low_tissue(white_result.warnings)


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.full((50, 50, 3), 255, np.uint8),  # white glass
        lambda: np.full((50, 50, 3), (214, 160, 200), np.uint8),  # uniform pink
        lambda: np.full((13, 50, 3), 242, np.uint8),  # a grey-white edge strip: no colour at all
    ],
    ids=["white", "uniform-pink", "grey-white-edge"],
)
def test_a_patch_with_little_tissue_gets_a_result_and_a_warning(
    registry: Registry, make: Callable[[], np.ndarray]
) -> None:
    result = analyse("histopathology", [_png(make())], registry=registry)[0].result
    assert result.malignancy is not None
    assert _low_tissue(result.warnings)


def test_an_h_and_e_patch_of_any_small_size_has_no_warning(registry: Registry) -> None:
    rng = np.random.default_rng(0)
    patches = [
        he_patch(rng, shape, tumour=True) for shape in [(50, 50), (13, 50), (50, 7), (60, 70)]
    ]
    for analysis in analyse("histopathology", [_png(p) for p in patches], registry=registry):
        assert analysis.result.malignancy is not None
        assert not _low_tissue(analysis.result.warnings)


def _radiograph(shape: tuple[int, int]) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    grey = 60 + 120 * np.exp(-((xx - shape[1] / 2) ** 2 + (yy - shape[0] / 2) ** 2) / 400)
    return np.clip(grey + 10 * np.sin(xx / 3), 0, 255).astype(np.uint8)  # (H, W)


@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "grey-as-rgb"])
def test_a_grey_radiograph_is_refused_as_wrong_stage(registry: Registry, rgb: bool) -> None:
    grey = _radiograph((120, 100))
    image = np.repeat(grey[..., None], 3, axis=2) if rgb else grey
    with pytest.raises(WrongStageError) as caught:
        analyse("histopathology", [_png(image)], registry=registry)
    assert caught.value.code == "wrong_stage" and caught.value.http_status == 422
    assert "colour" in caught.value.message


@pytest.mark.realdata
def test_a_real_radiograph_is_refused_grey_or_as_rgb(registry: Registry, shared_data: Path) -> None:
    path = shared_data / "mammography" / "mini-mias" / "mdb002.png"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    grey = decode(path).raw[0]  # (H, W) uint8: the stored grey values
    assert grey.ndim == 2
    for image in (grey, np.repeat(grey[..., None], 3, axis=2)):
        with pytest.raises(WrongStageError):
            analyse("histopathology", [_png(image)], registry=registry)


def test_the_metadata_rule_refuses_one_sample_per_pixel_only() -> None:
    grey = decode(_png(np.full((50, 50), 255, np.uint8)))
    with pytest.raises(WrongStageError, match="one sample per pixel"):
        check_stage(Stage.HISTOPATHOLOGY, grey, 0)
    white_rgb = decode(_png(np.full((50, 50, 3), 255, np.uint8)))
    assert check_stage(Stage.HISTOPATHOLOGY, white_rgb, 0) == []


def test_serving_pads_an_edge_patch_as_training_does() -> None:
    config = PAD_IMAGENET
    patch = he_patch(np.random.default_rng(3), (13, 50), tumour=False).astype(np.float32) / 255
    plan = histo.plan_tiles(patch, (50, 50), histo.TileOptions())
    batch = histo.window_batch(patch, plan, config)  # (1, 3, 50, 50)
    expected = normalise(prepare(patch, config).image, config)
    np.testing.assert_array_equal(batch[0], expected)  # the pixels training's dataset makes


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((50, 50, 3), np.float32), ((13, 50, 3), np.float64), ((7, 5, 4), np.uint8)],
)
def test_chroma_is_each_pixels_channel_range(shape: tuple[int, ...], dtype: type) -> None:
    """The colour statistics' channel range, taken channel by channel, is numpy's max - min over
    the last axis, in the image's own type."""
    rng = np.random.default_rng(3)
    image = (rng.random(shape) * (255 if dtype is np.uint8 else 1)).astype(dtype)
    spread = chroma(image)
    assert spread.dtype == image.dtype and spread.shape == shape[:2]
    np.testing.assert_array_equal(spread, image.max(axis=2) - image.min(axis=2))
