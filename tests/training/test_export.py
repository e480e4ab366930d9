"""``training.export``: ONNX contract, parity (passing and deliberately broken), card, CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from models_registry.registry import Registry
from training import export as export_module
from training import export_card
from training.cli_export import main
from training.config import config_from_dict
from training.export import (
    ExportResult,
    TrainedRun,
    export_checkpoint,
    load_trained,
    split_images,
)
from training.parity import (
    FP32_TOLERANCE,
    ExportError,
    ParityError,
    check_onnx,
    load_images,
    torch_outputs,
)

from . import tiny_runs


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    return tiny_runs.exported("ultrasound", tmp_path_factory, fp16=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_runs.trained("ultrasound", tmp_path_factory)


def tamper_initializer(source: Path, target: Path) -> Path:
    """Copy ``source`` with 0.5 added to every element of its last initializer (a head bias)."""
    model = onnx.load(str(source))
    tensor = model.graph.initializer[-1]
    values = numpy_helper.to_array(tensor) + np.float32(0.5)
    tensor.CopyFrom(numpy_helper.from_array(values.astype(np.float32), tensor.name))
    onnx.save(model, str(target))
    return target


def test_onnx_contract(exported: ExportResult) -> None:
    model = onnx.load(str(exported.onnx_path))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    (image,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert (image.name, dims) == ("image", ["N", 1, 32, 32])
    outputs = {
        o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
        for o in model.graph.output
    }
    assert outputs == {"mask_logits": ["N", 1, 32, 32], "malignancy_logit": ["N", 1]}


def test_parity_figures_meet_their_tolerances(exported: ExportResult) -> None:
    parity, fp16 = exported.parity, exported.fp16_parity
    assert parity.ok and parity.max_abs_prob_diff <= 1e-4
    assert parity.mask_agreement is not None and parity.mask_agreement >= 0.999
    assert fp16 is not None and fp16.ok and fp16.max_abs_prob_diff <= 1e-2
    assert exported.fp16_path is not None and exported.fp16_path.is_file()
    assert exported.draft.parity.tolerance == 1e-4
    assert exported.draft.onnx.fp16 is not None
    assert exported.draft.onnx.fp16.parity.max_abs_prob_diff == fp16.max_abs_prob_diff


def test_card_draft_carries_the_training_contract(exported: ExportResult, checkpoint: Path) -> None:
    run_dir = checkpoint.parent
    draft = exported.draft
    run = load_trained(checkpoint)
    assert draft.input.preprocess == run.config.preprocess.model_dump(mode="json")
    assert draft.preprocess_config() == run.config.preprocess
    assert (draft.stage.value, draft.task.value) == ("ultrasound", "segmentation")
    assert draft.architecture.parameters == sum(p.numel() for p in run.model.parameters())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert draft.calibration.temperature == pytest.approx(metrics["temperature"])
    (evaluation,) = draft.evaluation_sets
    split_bytes = (run_dir / "split.json").read_bytes()
    assert evaluation.split_file_sha256 == hashlib.sha256(split_bytes).hexdigest()
    test_entries = [e for e in json.loads(split_bytes)["entries"] if e["split"] == "test"]
    assert sum(evaluation.class_counts.values()) == len(test_entries)
    dice = next(m for m in draft.metrics if m.name == "dice")
    assert (dice.value, dice.n) == (metrics["test"]["dice"]["value"], metrics["test"]["dice"]["n"])
    assert dice.ci_low is not None and dice.ci_level == 0.95
    assert draft.training.config == run.config.model_dump(mode="json")
    assert draft.training.seed == 0 and draft.training.duration_s > 0
    epochs = len((run_dir / "history.csv").read_text().splitlines()) - 1  # a row per epoch
    assert draft.training.epochs == epochs >= 1
    assert draft.provenance[0].name.startswith("synthetic")  # a synthetic run is carded so
    assert "Not for clinical use" in draft.intended_use
    assert json.loads(exported.card_path.read_text())["parity"]["n_images"] == 2


def test_broken_onnx_fails_parity_with_figures(checkpoint: Path, tmp_path: Path) -> None:
    run = load_trained(checkpoint)
    images = split_images(checkpoint.parent, "test", 4)
    batch = load_images(images, run.config.preprocess)
    good = tmp_path / "good.onnx"
    export_module.export_onnx(run, good)
    bad = tamper_initializer(good, tmp_path / "bad.onnx")
    reference = torch_outputs(run.model, batch, run.output_names)
    with pytest.raises(ParityError) as caught:
        check_onnx(reference, bad, batch, tolerance=FP32_TOLERANCE, label="torch vs onnx fp32")
    error = caught.value
    assert error.code == "onnx_parity_failed"
    assert error.context["max_abs_prob_diff"] > 1e-4 and error.context["n_images"] == len(images)
    assert "max |prob diff|" in error.message and "tolerance 0.0001" in error.message


def test_export_fails_when_the_written_file_is_broken(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = export_module.export_onnx

    def export_then_break(run: export_module.TrainedRun, path: Path, **kw: int) -> Path:
        original(run, path, **kw)
        return tamper_initializer(path, path)

    monkeypatch.setattr(export_module, "export_onnx", export_then_break)
    out = tmp_path / "model.onnx"
    with pytest.raises(ParityError):
        export_checkpoint(checkpoint, out, parity_images=split_images(checkpoint.parent))
    assert not out.exists() and not out.with_suffix(".card.json").exists()


def test_cli_exports_and_registers(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    argv = ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx"), "--register"]
    argv += ["--name", "us-cli", "--alias", "staging", "--store", str(store), "--parity-n", "2"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["registered"]["model"] == "us-cli@1" and summary["opset"] == 17
    assert summary["parity"]["max_abs_prob_diff"] <= 1e-4
    registry = Registry([store])
    assert registry.aliases("us-cli") == {"staging": 1}
    (report,) = registry.verify("us-cli@staging")
    assert report.ok, report.to_dict()


def test_cli_errors(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx"), "--register"])
    assert caught.value.code == 2
    missing = ["--checkpoint", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "m.onnx")]
    assert main(missing) == 1
    assert "export_error" in capsys.readouterr().err


def test_split_images_refuses_an_unknown_split(checkpoint: Path) -> None:
    with pytest.raises(ExportError, match="splits: train, val, test"):
        split_images(checkpoint.parent, "holdout")


def test_classifier_export(tmp_path_factory: pytest.TempPathFactory) -> None:
    result = tiny_runs.exported("histopathology", tmp_path_factory)
    draft = result.draft
    assert [o.name for o in draft.outputs] == ["class_logits"]
    assert draft.outputs[0].shape == ["N", 2] and draft.labels == ["non_idc", "idc"]
    assert result.parity.ok and result.parity.mask_agreement is None
    assert draft.input.preprocess["normalisation"] == "imagenet"


@pytest.mark.realdata
@pytest.mark.parametrize("stage", ["ultrasound", "mammography", "histopathology"])
def test_parity_on_real_images(
    stage: str, shared_data: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    busi = shared_data / "busi" / "Dataset_BUSI_with_GT"
    images = {
        "ultrasound": sorted(busi.glob("malignant/malignant (1[0-9]).png"))[:6],
        "mammography": sorted((shared_data / "mammography" / "mini-mias").glob("mdb00*.png"))[:4],
        "histopathology": sorted((shared_data / "idc" / "IDC_regular_ps50_idx5").glob("*/*/*"))[
            :16
        ],
    }[stage]
    checkpoint = tiny_runs.trained(stage, tmp_path_factory)
    result = export_checkpoint(checkpoint, tmp_path / "m.onnx", parity_images=images, fp16=True)
    assert result.parity.ok and result.parity.n_images == len(images) >= 4
    assert result.fp16_parity is not None and result.fp16_parity.ok
    print(stage, result.parity.describe(), "|", result.fp16_parity.describe())


def test_config_round_trip_of_the_checkpoint(checkpoint: Path) -> None:
    run = load_trained(checkpoint)
    assert config_from_dict(run.config.model_dump(mode="json")) == run.config
    assert run.output_names == ("mask_logits", "malignancy_logit")


def test_operating_point_on_validation_goes_into_the_card(checkpoint: Path, tmp_path: Path) -> None:
    """``--operating-point-split val``: the thresholds chosen with the exported file on the run's
    validation images are the card's, and the choice is written beside it."""
    out = tmp_path / "model.onnx"
    images = split_images(checkpoint.parent, "test", 4)
    result = export_checkpoint(
        checkpoint,
        out,
        parity_images=images,
        weights_fp16=True,
        operating_point_split="val",
        max_false_lesion_rate=0.0,
    )
    point = json.loads(out.with_suffix(".operating-point.json").read_text())
    thresholds = result.draft.thresholds
    assert (thresholds.mask, thresholds.presence, thresholds.malignancy) == (
        point["mask"],
        point["presence"],
        point["malignancy"],
    )
    assert point["val"]["n_images"] == len(split_images(checkpoint.parent, "val", 1000))
    assert point["val"]["false_lesion_rate"] == 0.0 or point["presence"] == pytest.approx(0.99)
    assert thresholds.min_lesion_area_px == point["min_lesion_area_px"]


def _export_lenient(result: Any, out: Path, **options: Any) -> Any:
    """Export a tiny run with a 0.05 mask threshold (a tiny model marks something) and parity
    on four test images."""
    return export_checkpoint(
        result.best_checkpoint,
        out,
        parity_images=split_images(result.output_dir, "test", 4),
        thresholds=export_module.Thresholds(mask=0.05, min_lesion_area_px=1),
        **options,
    )


def test_lesion_malignancy_output_reaches_each_lesion_through_the_service(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A U-Net with the per-pixel malignancy map: exported with its third output in the card,
    registered, and analysed by the service pipeline, whose lesions carry their own malignancy
    and detection score."""
    from models_registry.card import OutputRole
    from models_registry.store import DirectoryStore
    from service.inference.pipeline import analyse
    from training.data.synthetic import make_busi
    from training.trainer import train

    folder = tmp_path_factory.mktemp("lesion-map")
    config = tiny_runs._config("ultrasound", make_busi(folder / "data", n=12), folder / "run")
    config["model"]["options"] = {"depth": 2, "lesion_malignancy": True}
    config["loss"] |= {"lesion_malignancy_weight": 1.0}
    config["optim"] |= {"epochs": 2, "lr": 0.01}
    result = train(config_from_dict(config))
    out = folder / "export" / "model.onnx"
    exported = _export_lenient(result, out)
    roles = {o.name: o.role for o in exported.draft.outputs}
    assert roles["lesion_malignancy_logits"] is OutputRole.LESION_MALIGNANCY
    registry = Registry([DirectoryStore(folder / "store")])
    registry.register("us-map", out, exported.draft, alias="production")
    image = split_images(result.output_dir, "test", 1)[0]
    analysis = analyse("ultrasound", [image], registry=registry, model_ref="us-map")[0]
    lesions = analysis.result.lesions
    assert lesions, "a 0.05 mask threshold marks something on a synthetic lesion image"
    for lesion in lesions:
        assert lesion.malignancy is not None and 0.0 <= lesion.malignancy <= 1.0
        assert lesion.score is not None and lesion.score >= 0.05


def test_presence_output_gates_the_service_and_its_threshold_is_chosen_on_validation(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A U-Net with a presence head (trained alone on top of frozen weights): exported with the
    presence output in the card and ``image_presence`` chosen on validation with the other
    thresholds; the service marks no lesion where that output is below the card's threshold."""
    from models_registry.card import OutputRole
    from models_registry.store import DirectoryStore
    from service.inference.pipeline import analyse
    from training.data.synthetic import make_busi
    from training.trainer import train

    folder = tmp_path_factory.mktemp("presence")
    data = make_busi(folder / "data", n=24)
    base = tiny_runs._config("ultrasound", data, folder / "base")
    base["optim"] |= {"epochs": 2, "lr": 0.01}
    first = train(config_from_dict(base))
    head = tiny_runs._config("ultrasound", data, folder / "head")
    head["model"]["options"] = {"depth": 2, "presence": True}
    head["model"]["pretrained"] = str(first.best_checkpoint)
    head["loss"] |= {"presence_weight": 1.0}
    head["optim"] |= {"epochs": 2, "lr": 0.01}
    head["train_only"] = ["presence_head"]
    result = train(config_from_dict(head))
    out = folder / "export" / "model.onnx"
    exported = _export_lenient(result, out, operating_point_split="val")
    roles = {o.name: o.role for o in exported.draft.outputs}
    assert roles["presence_logit"] is OutputRole.PRESENCE
    point = json.loads(out.with_suffix(".operating-point.json").read_text(encoding="utf-8"))
    assert exported.draft.thresholds.image_presence == point["image_presence"]
    assert 0.0 <= point["image_presence"] <= 1.0
    registry = Registry([DirectoryStore(folder / "store")])
    lenient = export_module.Thresholds(mask=0.05, min_lesion_area_px=1)
    for name, thresholds in (
        ("us-open", lenient),
        ("us-closed", lenient.model_copy(update={"image_presence": 1.0})),
    ):
        card = exported.draft.model_copy(update={"thresholds": thresholds})
        registry.register(name, out, card, alias="production")
    image = split_images(result.output_dir, "test", 1)[0]
    opened = analyse("ultrasound", [image], registry=registry, model_ref="us-open")[0]
    closed = analyse("ultrasound", [image], registry=registry, model_ref="us-closed")[0]
    assert opened.result.lesions, "a 0.05 mask threshold marks something on a synthetic image"
    assert closed.result.lesions == [] and not closed.mask.any()
    assert len(closed.candidates) == len(opened.result.lesions)  # dropped, kept as candidates


def test_operating_point_on_an_unknown_split_is_a_typed_error(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.onnx"
    args = ["--checkpoint", str(checkpoint), "--out", str(out), "--parity-n", "2"]
    assert main([*args, "--operating-point-split", "nowhere"]) == 1
    assert "split 'nowhere'" in capsys.readouterr().err


def test_operating_point_of_a_run_stopped_before_its_final_evaluation_is_a_typed_error(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run killed after its last checkpoint but before ``metrics.json``: the export says what
    is missing and how to finish the run (it crashed with a FileNotFoundError)."""
    run = tmp_path / "run"
    shutil.copytree(checkpoint.parent, run)
    (run / "metrics.json").unlink()
    out = tmp_path / "model.onnx"
    args = ["--checkpoint", str(run / checkpoint.name), "--out", str(out), "--parity-n", "2"]
    assert main([*args, "--operating-point-split", "val"]) == 1
    err = capsys.readouterr().err
    assert "no metrics.json" in err and "breastdx train --resume" in err
    assert "Traceback" not in err


def test_combined_mammography_card_names_both_sources_and_box_targets(tmp_path: Path) -> None:
    """A ``cbis_ddsm_coco+mias`` run is carded with both data sets' provenance and the
    mammography limitations (box-derived targets, film-only data), not CBIS-DDSM alone."""
    config = config_from_dict(
        {
            "stage": "mammography",
            "task": "segmentation",
            "data": {"dataset": "cbis_ddsm_coco+mias", "root": str(tmp_path)},
            "model": {"name": "unet", "width": 4, "in_channels": 1, "input_size": 64},
        }
    )
    run = TrainedRun(checkpoint=tmp_path / "best.pt", config=config, model=None, state={})  # type: ignore[arg-type]
    assert [source.name for source in export_card._provenance(run)] == ["CBIS-DDSM", "mini-MIAS"]
    assert export_card._dataset_name(run) == "CBIS-DDSM + mini-MIAS"
    limitations = " ".join(export_card._limitations(run))
    assert "Box-derived training targets" in limitations
    assert "Film-only data" in limitations
