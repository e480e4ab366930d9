"""int8 as an evaluated variant, end to end on the tiny ultrasound model.

``breastdx quantize`` fits int8 scales on the split's TRAINING images (preprocessed as served) and
registers a new version carrying ``model.int8.onnx``; no int8 runtime serves it until ``breastdx
evaluate --runtime openvino-int8 --register`` (or ``onnxruntime-int8``) records its figures on the
card's own test split; then the runner opens the int8 file by name, ``auto`` gates and times it,
and ``models verify`` checks its hash and contract.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from breastdx.cli import main as breastdx
from models_registry.card import INT8_FILE, ONNX_FILE, Runtime
from models_registry.errors import ModelIntegrityError, RuntimeNotAllowedError
from models_registry.quantize import fold_float16_weights
from models_registry.registry import Registry
from models_registry.runtime import OpenVinoSession, OrtSession, installed_runtimes
from models_registry.store import DirectoryStore
from service.inference import clear_runners, get_runner
from service.inference.runner import RunnerOptions
from service.inference.runtime_choice import AUTO
from tests.models_registry.test_card import EVALUATED, GATE, draft_dict, error_text
from tests.service.jobs_support import build_store
from tests.test_evaluation import SQUARE, _block, _evaluate, _png, _split, make_busi

OV_INT8, ORT_INT8 = Runtime.OPENVINO_INT8, Runtime.ONNXRUNTIME_INT8
TEST = ["benign (1)", "malignant (1)", "normal (1)", "normal (2)"]
TRAIN = ["benign (2)", "benign (3)", "malignant (2)", "normal (3)"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clear_runners()
    return build_store(tmp_path_factory.mktemp("int8-models"))


@pytest.fixture(autouse=True)
def _fresh_runners() -> None:
    clear_runners()


def _data(tmp_path: Path) -> tuple[Path, Path]:
    """BUSI-like data: the four test images of ``make_busi`` plus four training images, and
    a split naming both parts."""
    data = make_busi(tmp_path / "busi")
    base = data / "Dataset_BUSI_with_GT"
    for i, name in enumerate(TRAIN):
        cls = name.split(" ")[0]
        block = (8 + 4 * i, 12, 20, 24, 200 + 10 * i)
        _png(base / cls / f"{name}.png", _block((64, 64), block, SQUARE))
        _png(base / cls / f"{name}_mask.png", _block((64, 64), block))
    classes = {n: n.split(" ")[0] for n in TEST + TRAIN}
    entries = [(n, "test") for n in TEST] + [(n, "train") for n in TRAIN]
    return data, _split(tmp_path / "us.json", entries, classes)


def _quantize(store: Path, *args: str) -> int:
    return breastdx(["quantize", "--stage", "ultrasound", *args, "--store", str(store)])


def test_int8_runtimes_are_reduced_precision_ones_on_their_own_file() -> None:
    assert OV_INT8.reduced_precision and ORT_INT8.reduced_precision and OV_INT8.int8
    assert OV_INT8.engine is Runtime.OPENVINO and ORT_INT8.engine is Runtime.ONNXRUNTIME
    assert not Runtime.OPENVINO_BF16.int8
    assert OV_INT8 not in installed_runtimes()  # export and benchmarks: float32 runtimes
    assert {OV_INT8, ORT_INT8} <= set(installed_runtimes(reduced_precision=True))


def test_quantize_then_evaluate_lets_the_int8_file_serve(store: Path, tmp_path: Path) -> None:
    data, split = _data(tmp_path)
    target = tmp_path / "ship"
    on_split = ["--stage", "ultrasound", str(data), "--split", str(split)]
    register = ["--register", "--register-store", str(target)]
    code, _ = _evaluate(store, tmp_path / "fp32", *on_split, "--model", "us-tiny@1", *register)
    assert code == 0  # us-tiny@1 in the target, with float32 figures on the test part

    assert _quantize(target, str(data), "--split", str(split), "--images", "3") == 0
    shipped = Registry([DirectoryStore(target)])
    card = shipped.card("us-tiny@2")
    assert card.onnx.int8 is not None and card.metrics == shipped.card("us-tiny@1").metrics
    quantization = card.onnx.int8.quantization
    assert quantization.n_calibration_images == 3 and quantization.per_channel
    assert "3 images of the 'train' part of us.json (busi; seed 0)" in quantization.calibration
    int8_path = target / "us-tiny" / "2" / INT8_FILE
    graph = onnx.load(str(int8_path)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops  # a QDQ graph
    assert any(i.data_type == TensorProto.INT8 for i in graph.initializer)  # int8 weights
    with pytest.raises(RuntimeNotAllowedError, match="not 'openvino-int8'"):
        get_runner("us-tiny@2", shipped, RunnerOptions(runtime=OV_INT8))  # not measured yet

    for runtime in (OV_INT8, ORT_INT8):
        asked = ["--model", "us-tiny@latest", "--runtime", runtime.value]
        code, report = _evaluate(target, tmp_path / runtime.value, *on_split, *asked, *register)
        assert code == 0
        assert report["model"]["runtime"]["runtime"] == runtime.value
    card = shipped.card("us-tiny@4")  # @3 lists openvino-int8, @4 both
    assert card.onnx.int8 is not None and card.onnx.int8.sha256 == sha(int8_path)
    assert {v.runtime for v in card.reduced_precision} == {OV_INT8, ORT_INT8}
    entry = card.reduced_variant(OV_INT8)
    assert entry is not None and {m.name for m in entry.metrics} >= {"dice", "malignancy_auc"}

    for runtime, session_type in ((OV_INT8, OpenVinoSession), (ORT_INT8, OrtSession)):
        runner = get_runner("us-tiny@4", shipped, RunnerOptions(runtime=runtime))
        assert isinstance(runner.session, session_type) and runner.runtime is runtime
        assert runner.session.path.name == INT8_FILE  # the int8 file, not model.onnx
        (trial,) = runner.selection.trials
        assert trial.parity is not None and trial.parity.ok
    auto = get_runner("us-tiny@4", shipped, RunnerOptions(runtime=AUTO))
    tried = {t.runtime: t for t in auto.selection.trials}
    assert {OV_INT8, ORT_INT8} <= set(tried) and tried[OV_INT8].model_ms is not None
    (verified,) = shipped.verify("us-tiny@4", runtimes=True)
    names = {c.name for c in verified.checks}
    assert verified.ok and f"sha256 {INT8_FILE}" in names and f"sha256 {ONNX_FILE}" in names


def sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_changed_int8_file_fails_the_integrity_check(store: Path, tmp_path: Path) -> None:
    data, split = _data(tmp_path)
    target = tmp_path / "ship"
    code = _quantize(store, str(data), "--split", str(split), "--images", "2",
                     "--model", "us-tiny@1", "--register-store", str(target))  # fmt: skip
    assert code == 0
    registry = Registry([DirectoryStore(target)])
    assert registry.load("us-tiny@1").onnx_path.name == ONNX_FILE
    int8_path = target / "us-tiny" / "1" / INT8_FILE
    int8_path.chmod(0o644)
    int8_path.write_bytes(int8_path.read_bytes() + b"\0")
    with pytest.raises(ModelIntegrityError):
        registry.load("us-tiny@1")
    (verified,) = registry.verify("us-tiny@1")
    assert not verified.ok


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--images", "0"], 2, "--images must be >= 1"),
        (["--subset", "holdout"], 2, "has no subset 'holdout'"),
        (["--model", "idc-tiny"], 2, "serves histopathology, not ultrasound"),
        (["--model", "nosuch"], 1, "unknown_model"),
    ],
)
def test_quantize_refuses_bad_usage_with_a_message(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int,
    message: str,
) -> None:  # fmt: skip
    data, split = _data(tmp_path)
    try:
        got = _quantize(store, str(data), "--split", str(split), *args)
    except SystemExit as exc:  # argparse's usage errors
        got = int(exc.code or 0)
    assert got == code
    assert message in capsys.readouterr().err


def test_an_int8_runtime_needs_the_int8_file_on_the_card() -> None:
    entry = {"runtime": "openvino-int8", "device": "CPU", "gate": GATE, "metrics": EVALUATED}
    text = error_text(metrics=EVALUATED, reduced_precision=[entry])
    assert "reduced_precision lists openvino-int8, but the card has no int8 file" in text
    onnx_export = {"opset": 17, "int8": {"quantization": {
        "tool": "onnxruntime.quantization 1.32.0", "calibration": "train images",
        "n_calibration_images": 8}}}  # fmt: skip
    from models_registry.card import CardDraft

    draft = CardDraft.model_validate(
        draft_dict(metrics=EVALUATED, reduced_precision=[entry], onnx=onnx_export)
    )
    assert draft.allows(OV_INT8) and not draft.allows(ORT_INT8)


def test_float16_stored_weights_are_folded_back_to_float32() -> None:
    weight = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2) / 8
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["w16"], ["w"], to=TensorProto.FLOAT),
            helper.make_node("Conv", ["x", "w"], ["y"]),
        ],
        "fp16-stored",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 3, 3])],
        [numpy_helper.from_array(weight.astype(np.float16), "w16")],
    )
    model = helper.make_model(graph)
    assert fold_float16_weights(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    (init,) = model.graph.initializer
    assert init.name == "w" and init.data_type == TensorProto.FLOAT
    np.testing.assert_array_equal(numpy_helper.to_array(init), weight)
