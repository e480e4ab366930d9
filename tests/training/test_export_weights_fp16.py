"""fp16 weight storage (``training.export_weights``, ``breastdx export --weights-fp16``).

A small trained U-Net (width 16, depth 4: most weights lie in tensors large enough to convert):
parity with torch within ``WEIGHTS_FP16_TOLERANCE``, about half the file size, float32 inputs and
outputs, ONNX Runtime on CPU runs it, the card says what it is, and the registry takes it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from models_registry.registry import Registry
from training.checkpoint import load_checkpoint, save_checkpoint
from training.cli_export import main
from training.config import config_from_dict
from training.data.synthetic import make_busi
from training.export import ExportResult, export_checkpoint, split_images
from training.export_weights import MIN_ELEMENTS, SUFFIX, store_weights_fp16
from training.parity import WEIGHTS_FP16_TOLERANCE, ExportError, onnx_outputs
from training.trainer import train

from . import tiny_runs


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of the shipped U-Net shape (width 16, depth 4) on synthetic images at 32 px."""
    folder = tmp_path_factory.mktemp("weights-fp16")
    raw = tiny_runs._config("ultrasound", make_busi(folder / "data", n=12), folder / "run")
    raw["model"] = raw["model"] | {"width": 16, "options": {"depth": 4}}
    result = train(config_from_dict(raw))
    state = load_checkpoint(result.best_checkpoint)
    if not state.get("git_commit"):  # outside a git checkout: the card needs a commit
        save_checkpoint(result.best_checkpoint, state | {"git_commit": "0" * 40})
    return result.best_checkpoint


@pytest.fixture(scope="module")
def exports(
    checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ExportResult, ExportResult]:
    """The same checkpoint exported as float32 and with fp16 weight storage."""
    folder = tmp_path_factory.mktemp("exports")
    images = split_images(checkpoint.parent, "test", 8)
    full = export_checkpoint(checkpoint, folder / "full" / "model.onnx", parity_images=images)
    small = export_checkpoint(
        checkpoint, folder / "small" / "model.onnx", parity_images=images, weights_fp16=True
    )
    return full, small


def test_parity_with_torch_within_its_tolerance(exports: tuple[ExportResult, ExportResult]) -> None:
    _, small = exports
    assert small.weights_fp16 and small.parity.tolerance == WEIGHTS_FP16_TOLERANCE
    assert small.parity.ok and small.parity.max_abs_prob_diff <= 2e-3
    assert small.parity.mask_agreement is not None and small.parity.mask_agreement >= 0.995
    assert small.parity.label == "torch vs onnx fp16 weights"
    assert small.fp32_parity is not None and small.fp32_parity.max_abs_prob_diff <= 1e-4
    assert not small.onnx_path.with_suffix(".fp32.onnx").exists()  # the intermediate is gone


def test_file_is_about_half_the_size(exports: tuple[ExportResult, ExportResult]) -> None:
    full, small = exports
    ratio = small.onnx_path.stat().st_size / full.onnx_path.stat().st_size
    assert 0.45 <= ratio <= 0.6, ratio


def test_onnx_runtime_cpu_runs_it_with_float32_io(
    exports: tuple[ExportResult, ExportResult],
) -> None:
    full, small = exports
    options = ort.SessionOptions()
    options.log_severity_level = 3
    began = time.perf_counter()
    session = ort.InferenceSession(
        str(small.onnx_path), options, providers=["CPUExecutionProvider"]
    )
    assert time.perf_counter() - began < 10.0  # folding the casts is quick
    assert [i.type for i in session.get_inputs()] == ["tensor(float)"]
    assert {o.type for o in session.get_outputs()} == {"tensor(float)"}
    batch = np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)  # (B, C, H, W)
    names = ["mask_logits", "malignancy_logit"]
    ours, theirs = (
        onnx_outputs(small.onnx_path, batch, names),
        onnx_outputs(full.onnx_path, batch, names),
    )
    for name in names:
        assert ours[name].dtype == np.float32 and ours[name].shape == theirs[name].shape
        np.testing.assert_allclose(ours[name], theirs[name], atol=0.05)


def test_graph_casts_float16_weights_to_float32(exports: tuple[ExportResult, ExportResult]) -> None:
    _, small = exports
    graph = onnx.load(str(small.onnx_path)).graph
    half = [t for t in graph.initializer if t.data_type == TensorProto.FLOAT16]
    casts = {n.input[0]: n for n in graph.node if n.op_type == "Cast"}
    assert half and all(t.name.endswith(SUFFIX) and t.name in casts for t in half)
    assert all(helper.get_attribute_value(casts[t.name].attribute[0]) == 1 for t in half)
    kept = [t for t in graph.initializer if t.data_type == TensorProto.FLOAT]
    assert all(numpy_helper.to_array(t).size < MIN_ELEMENTS for t in kept)


def test_card_records_the_storage_and_its_parity(
    exports: tuple[ExportResult, ExportResult], tmp_path: Path
) -> None:
    full, small = exports
    note = [item for item in small.draft.limitations if "stored as float16" in item]
    assert len(note) == 1 and "tolerance 0.002" in note[0] and "99.5%" in note[0]
    assert not any("stored as float16" in item for item in full.draft.limitations)
    assert small.draft.parity.tolerance == 2e-3
    assert small.draft.parity.max_abs_prob_diff == small.parity.max_abs_prob_diff
    registry = Registry([tmp_path / "store"])
    card = registry.register("us-small", small.onnx_path, small.draft, alias="production")
    (report,) = registry.verify(card.ref)
    assert report.ok, report.to_dict()


def test_small_tensors_and_out_of_range_values_stay_float32(tmp_path: Path) -> None:
    big = np.full((MIN_ELEMENTS,), 1.0e5, np.float32)  # beyond float16's 65504
    weights = np.linspace(-1, 1, MIN_ELEMENTS, dtype=np.float32)
    inits = [
        numpy_helper.from_array(weights, "w"),
        numpy_helper.from_array(big, "big"),
        numpy_helper.from_array(np.ones(4, np.float32), "small"),
    ]
    nodes = [
        helper.make_node("Add", ["x", "w"], ["y0"]),
        helper.make_node("Add", ["y0", "big"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [MIN_ELEMENTS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [MIN_ELEMENTS])],
        inits,
    )
    source = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), source)
    storage = store_weights_fp16(source, tmp_path / "g16.onnx")
    assert (storage.converted, storage.kept) == (1, 2)
    x = np.zeros(MIN_ELEMENTS, np.float32)
    (y,) = ort.InferenceSession(str(tmp_path / "g16.onnx")).run(None, {"x": x})
    np.testing.assert_allclose(y, weights.astype(np.float16).astype(np.float32) + big)


def test_it_excludes_the_fp16_variant(checkpoint: Path, tmp_path: Path) -> None:
    images = split_images(checkpoint.parent, "test", 2)
    with pytest.raises(ExportError, match="exclude each other"):
        export_checkpoint(
            checkpoint, tmp_path / "m.onnx", parity_images=images, fp16=True, weights_fp16=True
        )
    argv = ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx")]
    with pytest.raises(SystemExit) as caught:
        main([*argv, "--fp16", "--weights-fp16"])
    assert caught.value.code == 2


def test_cli_flag(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    argv = ["--checkpoint", str(checkpoint), "--out", str(out), "--weights-fp16"]
    assert main([*argv, "--parity-n", "4"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["weights_fp16"] is True and summary["fp16"] is None
    assert summary["parity"]["tolerance"] == 2e-3 and summary["parity"]["max_abs_prob_diff"] <= 2e-3
    assert summary["fp32_parity"]["tolerance"] == 1e-4


def test_split_images_follow_the_runs_data_root(checkpoint: Path, tmp_path: Path) -> None:
    """A split file made under another data root (``$BREASTDX_DATA_ROOT``): ids still resolve."""
    run = tmp_path / "run"
    shutil.copytree(checkpoint.parent, run)
    split = json.loads((run / "split.json").read_text())
    for record in split["samples"].values():
        record["image_path"] = "/elsewhere/" + Path(record["image_path"]).name
    (run / "split.json").write_text(json.dumps(split))
    files = split_images(run, "test", 4)
    assert files and all(f.is_file() for f in files)
    assert [f.name for f in files] == [f.name for f in split_images(checkpoint.parent, "test", 4)]
