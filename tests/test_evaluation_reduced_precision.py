"""Reduced precision as an evaluated variant, end to end on the tiny ultrasound model.

``breastdx evaluate --runtime openvino-bf16`` runs a runtime the card does not allow yet and
names it in the report; with ``--register`` the new version lists it in ``reduced_precision``
with these figures and gate bounds loosened from its measured gate; then, and only then, the
runner opens it by name, ``auto`` gates and times it, and ``models verify`` checks it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from models_registry.card import Runtime
from models_registry.errors import RuntimeNotAllowedError, RuntimeUnsupportedError
from models_registry.registry import Registry
from models_registry.runtime import (
    OpenVinoSession,
    installed_runtimes,
    open_session,
    openvino_capabilities,
)
from models_registry.store import DirectoryStore
from service.inference import clear_runners, get_runner
from service.inference.runner import RunnerOptions
from service.inference.runtime_choice import AUTO
from tests.service.jobs_support import build_store
from tests.test_evaluation import _evaluate, _split, make_busi
from training.amp_choice import BF16_FLAGS, cpu_flags

BF16 = Runtime.OPENVINO_BF16
CPU_FLAGS = cpu_flags() or frozenset()
BF16_UNITS = bool(CPU_FLAGS & BF16_FLAGS)
needs_bf16_units = pytest.mark.skipif(
    not BF16_UNITS,
    reason="this CPU has no bf16 units: openvino-bf16 is refused here (tested below)",
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clear_runners()
    return build_store(tmp_path_factory.mktemp("models"))


@pytest.fixture(autouse=True)
def _fresh_runners() -> None:
    clear_runners()


def test_openvino_says_bf16_exactly_where_the_cpu_has_bf16_units() -> None:
    assert ("BF16" in openvino_capabilities()) is BF16_UNITS, (openvino_capabilities(), CPU_FLAGS)


def test_openvino_bf16_is_opened_only_where_asked_and_computed() -> None:
    assert BF16 not in installed_runtimes()  # export and benchmarks: float32 runtimes
    assert (BF16 in installed_runtimes(reduced_precision=True)) is BF16_UNITS


@pytest.mark.skipif(BF16_UNITS, reason="this CPU computes bf16: openvino-bf16 runs (tested above)")
def test_without_bf16_units_openvino_bf16_is_refused_not_run_as_float32(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On such a CPU OpenVINO would run float32 under the bf16 name (and an evaluation would
    register float32's figures as bf16's): opening it, evaluating with it and serving with it
    are refused with the reason; ``auto`` leaves it out."""
    model = Registry([DirectoryStore(store)]).load("us-tiny@1")
    with pytest.raises(RuntimeUnsupportedError, match="no AVX512-BF16 or AMX") as refused:
        open_session(model.onnx_path, BF16)
    assert refused.value.code == "runtime_unsupported" and "auto" in refused.value.message
    data = make_busi(tmp_path / "busi")
    split = _split(tmp_path / "us.json", [("benign (1)", "test")], {"benign (1)": "benign"})
    args = ["--stage", "ultrasound", str(data), "--split", str(split), "--model", "us-tiny@1"]
    code, _ = _evaluate(store, tmp_path / "bf16", *args, "--runtime", "openvino-bf16")
    assert code != 0 and "cannot run on this CPU" in capsys.readouterr().err
    from service.cli import require_runtime

    with pytest.raises(RuntimeUnsupportedError):
        require_runtime("auto", "openvino-bf16")
    require_runtime("auto", "openvino")  # float32 OpenVINO runs here


@needs_bf16_units
def test_evaluate_lists_a_reduced_precision_runtime_only_from_its_figures(
    store: Path, tmp_path: Path
) -> None:
    data = make_busi(tmp_path / "busi")
    ids = ["benign (1)", "malignant (1)", "normal (1)", "normal (2)"]
    classes = dict(zip(ids, ["benign", "malignant", "normal", "normal"], strict=True))
    split = _split(tmp_path / "us.json", [(i, "test") for i in ids], classes)
    target = tmp_path / "ship"
    args = ["--stage", "ultrasound", str(data), "--split", str(split)]
    register = ["--register", "--register-store", str(target), "--alias", "production"]
    code, _ = _evaluate(store, tmp_path / "fp32", *args, "--model", "us-tiny@1", *register)
    assert code == 0  # us-tiny@1 in the target: figures measured on onnxruntime
    shipped = Registry([DirectoryStore(target)])
    with pytest.raises(RuntimeNotAllowedError, match="not 'openvino-bf16'"):
        get_runner("us-tiny@1", shipped, RunnerOptions(runtime=BF16))

    code, report = _evaluate(target, tmp_path / "bf16", *args, "--runtime", "openvino-bf16",
                             *register)  # fmt: skip
    assert code == 0
    ran = report["model"]["runtime"]
    assert ran["runtime"] == "openvino-bf16" and ran["device"] == "CPU"
    assert ran["trials"][0].startswith("openvino-bf16 (CPU): parity ")  # measured, not refused
    card = shipped.card("us-tiny@production")
    assert card.version == 2 and card.metrics == shipped.card("us-tiny@1").metrics
    entry = card.reduced_variant(BF16)
    assert entry is not None and entry.device == "CPU"
    dice = {m.name: m for m in entry.metrics}["dice"]
    assert dice.value == report["datasets"][0]["segmentation"]["dice"]["value"] and dice.n == 2
    assert entry.gate.tolerance is not None
    assert entry.gate.tolerance >= max(2 * entry.gate.max_abs_prob_diff, 1e-4)  # loosened

    runner = get_runner("us-tiny@2", shipped, RunnerOptions(runtime=BF16))
    assert isinstance(runner.session, OpenVinoSession) and runner.runtime is BF16
    (trial,) = runner.selection.trials
    assert trial.parity is not None and trial.parity.ok
    assert trial.parity.tolerance.prob == entry.gate.tolerance  # the card's looser bound
    auto = get_runner("us-tiny@2", shipped, RunnerOptions(runtime=AUTO))
    tried = {t.runtime: t for t in auto.selection.trials}
    assert set(tried) == {Runtime.ONNXRUNTIME, Runtime.OPENVINO, BF16}
    assert tried[BF16].passed and tried[BF16].model_ms is not None  # auto considers it
    (verified,) = shipped.verify("us-tiny@2", runtimes=True)
    checks = {c.name: c for c in verified.checks}
    assert verified.ok and "runtime openvino-bf16" in checks


def test_register_takes_the_reference_or_a_reduced_precision_runtime(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--stage", "ultrasound", str(tmp_path), "--split", str(tmp_path / "s.json")]
    with pytest.raises(SystemExit) as usage:
        _evaluate(store, tmp_path / "out", *args, "--runtime", "openvino", "--register")
    assert usage.value.code == 2
    assert "not openvino" in capsys.readouterr().err
