"""Warm starts from a shipped ONNX file (``training.onnx_weights``, ``breastdx warm-start``).

The exporter folds each batch norm into its convolution (and the store may keep fp16 weights
behind ``Cast`` nodes); the rebuilt network must compute what the file computes, in eval mode
exactly and in training mode on its calibration batch, and must refuse a file of another shape.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml

from training.cli_warm_start import main
from training.config import config_from_dict
from training.data.synthetic import make_busi
from training.export import ExportResult, export_checkpoint, split_images
from training.models import load_pretrained
from training.onnx_weights import state_from_onnx
from training.parity import ExportError
from training.trainer import build_model, train

from . import tiny_runs


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-weights")


@pytest.fixture(scope="module")
def raw(folder: Path) -> dict[str, object]:
    """The shipped U-Net's shape (depth 4) at width 8 on synthetic ultrasound images."""
    config = tiny_runs._config("ultrasound", make_busi(folder / "data", n=12), folder / "run")
    config["model"] = config["model"] | {"width": 8, "options": {"depth": 4}}  # type: ignore[operator]
    return config


@pytest.fixture(scope="module")
def exports(raw: dict[str, object], folder: Path) -> tuple[ExportResult, ExportResult]:
    """One trained epoch, exported as float32 and with fp16 weight storage (Cast nodes)."""
    best = train(config_from_dict(raw)).best_checkpoint
    images = split_images(best.parent, "test", 4)
    full = export_checkpoint(best, folder / "full" / "model.onnx", parity_images=images)
    small = export_checkpoint(
        best, folder / "small" / "model.onnx", parity_images=images, weights_fp16=True
    )
    return full, small


@pytest.fixture(scope="module")
def config_file(raw: dict[str, object], folder: Path) -> Path:
    """The network's training config as the CLI reads it."""
    path = folder / "net.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _batch(n: int = 6, size: int = 32, seed: int = 1) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.random((n, 1, size, size), dtype=np.float32))  # (N, 1, H, W)


def _onnx(path: Path, batch: torch.Tensor) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"image": batch.numpy()}), strict=True))


@pytest.mark.parametrize("storage", ["float32", "fp16"])
def test_the_rebuilt_network_computes_what_the_file_computes(
    raw: dict[str, object], exports: tuple[ExportResult, ExportResult], storage: str
) -> None:
    path = exports[storage == "fp16"].onnx_path
    calibration = _batch()
    weights = state_from_onnx(build_model(config_from_dict(raw)), path, calibration)
    assert weights.unfolded == 2 * (1 + 4 + 4)  # a DoubleConv per level down, bottom and up
    assert weights.by_name > 0  # heads and up-convolutions kept their names
    fresh = build_model(config_from_dict(raw))
    fresh.load_state_dict(weights.state)
    fresh.eval()
    other = _batch(seed=7)  # not the calibration batch
    expected = _onnx(path, other)
    with torch.no_grad():
        got = fresh(other)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name].numpy(), value, atol=2e-5, rtol=0)
    norms = [m for m in fresh.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(float(m.running_var.min()) > 0 for m in norms)
    assert any(float(m.running_mean.abs().max()) > 1e-3 for m in norms)  # calibrated, not zeros


def test_training_mode_on_the_calibration_batch_matches_eval(
    raw: dict[str, object], exports: tuple[ExportResult, ExportResult]
) -> None:
    """Batch statistics are the calibration statistics there, so a fine-tune starts where the
    file is rather than from a network its own batch norms scramble."""
    calibration = _batch(n=8)
    model = build_model(config_from_dict(raw))
    state_from_onnx(model, exports[0].onnx_path, calibration)
    model.eval()
    with torch.no_grad():
        eval_out = model(calibration)["mask_logits"]
        trained = copy.deepcopy(model).train()
        for m in trained.modules():  # dropout off: only the batch norms change mode
            if isinstance(m, torch.nn.Dropout):
                m.eval()
        train_out = trained(calibration)["mask_logits"]
    np.testing.assert_allclose(train_out.numpy(), eval_out.numpy(), atol=1e-3, rtol=0)


def test_a_resnet_with_its_batch_norms_as_attributes(tmp_path: Path) -> None:
    """ResNet50 (the histopathology model) keeps ``conv1``/``bn1`` as attributes, not in a
    ``Sequential``: its pairs come from the call order, and the rebuilt network equals the file."""
    import warnings

    from training.models import build_model as build
    from training.models.heads import OnnxExportWrapper

    source = build("resnet50", in_channels=3, num_classes=2, input_size=32)
    generator = torch.Generator().manual_seed(0)
    for m in source.modules():  # trained-looking statistics, so that folding changes weights
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)  # type: ignore[union-attr]
            m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)  # type: ignore[union-attr]
            m.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    path = tmp_path / "resnet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            OnnxExportWrapper(source).eval(),
            (torch.zeros(2, 3, 32, 32),),
            str(path),
            input_names=["image"],
            output_names=list(source.output_names),
            dynamic_axes={"image": {0: "n"}},
            opset_version=17,
            dynamo=False,
            do_constant_folding=True,
        )
    batch = torch.from_numpy(np.random.default_rng(2).random((4, 3, 32, 32), dtype=np.float32))
    model = build("resnet50", in_channels=3, num_classes=2, input_size=32)
    weights = state_from_onnx(model, path, batch)
    assert weights.unfolded == 53  # every convolution of ResNet50 is followed by its batch norm
    expected = _onnx(path, batch)["class_logits"]
    with torch.no_grad():
        got = model.eval()(batch)["class_logits"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_a_file_of_another_network_is_refused(
    raw: dict[str, object], exports: tuple[ExportResult, ExportResult]
) -> None:
    wider = copy.deepcopy(raw)
    wider["model"]["width"] = 12  # type: ignore[index]
    with pytest.raises(ExportError, match="shape"):
        state_from_onnx(build_model(config_from_dict(wider)), exports[0].onnx_path, _batch())
    shallower = copy.deepcopy(raw)
    shallower["model"]["options"] = {"depth": 3}  # type: ignore[index]
    with pytest.raises(ExportError, match=r"not this architecture|shape"):
        state_from_onnx(build_model(config_from_dict(shallower)), exports[0].onnx_path, _batch())


def test_the_cli_writes_a_state_a_fine_tune_starts_from(
    raw: dict[str, object],
    exports: tuple[ExportResult, ExportResult],
    folder: Path,
    config_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = config_file
    out = folder / "base.pt"
    code = main(
        [
            "--config",
            str(config),
            "--onnx",
            str(exports[1].onnx_path),
            "--out",
            str(out),
            "--n",
            "6",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["calibration_images"] == 6 and summary["max_abs_diff"] < 1e-3
    report = load_pretrained(build_model(config_from_dict(raw)), out)
    assert not report.missing and not report.skipped and not report.unexpected
    fine = copy.deepcopy(raw)
    fine["model"]["pretrained"] = str(out)  # type: ignore[index]
    fine["output_dir"] = str(folder / "fine")
    best = train(config_from_dict(fine)).best_checkpoint
    images = split_images(best.parent, "test", 2)
    card = export_checkpoint(best, folder / "fine" / "model.onnx", parity_images=images).draft
    assert any("Fine-tuned" in item and "base.pt" in item for item in card.limitations)


def test_a_config_that_trains_on_crops_is_checked_on_whole_images(
    raw: dict[str, object],
    exports: tuple[ExportResult, ExportResult],
    folder: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The mammography recipe trains on crops and exports at the whole film's size: the batch
    norms calibrate on crops, the parity check runs on whole images the file accepts."""
    cropped = copy.deepcopy(raw)
    size = int(cropped["model"]["input_size"])  # type: ignore[index]
    cropped["crops"] = {"size": size // 2, "per_image": 2, "min_tissue": 0.0}
    path = folder / "crops.yaml"
    path.write_text(yaml.safe_dump(cropped))
    out = folder / "crops.pt"
    argv = ["--config", str(path), "--onnx", str(exports[0].onnx_path), "--out", str(out)]
    assert main([*argv, "--n", "4"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["max_abs_diff"] < 1e-3
    state = torch.load(out, weights_only=True)
    norms = [k for k in state if k.endswith("running_var")]
    assert norms and all(float(state[k].min()) > 0 for k in norms)


def test_a_trainer_checkpoint_is_a_starting_state_too(
    raw: dict[str, object], exports: tuple[ExportResult, ExportResult]
) -> None:
    """``make models`` fine-tunes from the first run's best.pt: its exported weights load."""
    best = exports[0].onnx_path.parents[1] / "run" / "best.pt"
    assert best.is_file()
    model = build_model(config_from_dict(raw))
    report = load_pretrained(model, best)
    assert not report.missing and not report.skipped and not report.unexpected
    expected = _onnx(exports[0].onnx_path, _batch())
    model.eval()
    with torch.no_grad():
        got = model(_batch())["mask_logits"].numpy()
    np.testing.assert_allclose(got, expected["mask_logits"], atol=1e-4, rtol=0)


def test_the_cli_answers_bad_input_with_a_message(
    exports: tuple[ExportResult, ExportResult],
    folder: Path,
    config_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = config_file
    missing = ["--config", str(config), "--onnx", str(folder / "nope.onnx"), "--out", "x.pt"]
    assert main(missing) == 1
    assert "is not a file" in capsys.readouterr().err
    garbage = folder / "garbage.onnx"
    garbage.write_bytes(b"not an onnx file")
    assert main(["--config", str(config), "--onnx", str(garbage), "--out", "x.pt"]) == 1
    assert "garbage.onnx" in capsys.readouterr().err
    assert main(["--config", str(config), "--onnx", str(garbage), "--out", "x.pt", "--n", "1"]) == 2
    good = ["--config", str(config), "--onnx", str(exports[0].onnx_path)]
    assert main([*good, "--out", "x.pt", "--tolerance", "-1"]) == 2
    assert "--tolerance must be above 0" in capsys.readouterr().err
    assert main([*good, "--out", str(folder)]) == 2
    assert "is a folder" in capsys.readouterr().err
    blocker = folder / "a-file"
    blocker.write_bytes(b"")
    assert main([*good, "--out", str(blocker / "base.pt"), "--n", "2"]) == 1  # its parent is a file
    err = capsys.readouterr().err
    assert "cannot write" in err and "Traceback" not in err
    bigger = yaml.safe_load(config.read_text())
    bigger["model"]["input_size"] = 2 * int(bigger["model"]["input_size"])
    other = folder / "bigger.yaml"
    other.write_text(yaml.safe_dump(bigger))  # the file was exported at the smaller size
    assert main(["--config", str(other), *good[2:], "--out", str(folder / "b.pt"), "--n", "2"]) == 1
    err = capsys.readouterr().err
    assert "does not take the config's images" in err and "Traceback" not in err
