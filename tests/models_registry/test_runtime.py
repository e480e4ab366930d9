"""``models_registry.runtime`` and the runtime gate on the real shipped models.

Every installed runtime reproduces ONNX Runtime on CPU within each shipped card's tolerance; a
runtime whose package does not import is a typed error; ``breastdx models verify`` runs the gate
for each runtime a card allows and fails a card whose tolerance the runtime misses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from models_registry.card import Parity, Runtime, RuntimeParity
from models_registry.cli import main as models_main
from models_registry.errors import InvalidCardError
from models_registry.parity import card_tolerance, compare, gate, gate_inputs, reference_outputs
from models_registry.runtime import (
    WORK,
    OpenVinoSession,
    RuntimeOptions,
    Session,
    installed_runtimes,
    open_session,
    run_batched,
)
from tests.conftest import REPO_ROOT
from tests.runtime_support import register_copy, shipped_card, zero_tolerance

SHIPPED = ("ultrasound-unet", "mammography-unet", "histopathology-resnet18")


def test_the_serving_environment_installs_openvino() -> None:
    """pyproject's serve extra (and so setup-serve / setup-dev) brings OpenVINO."""
    assert installed_runtimes() == (Runtime.ONNXRUNTIME, Runtime.OPENVINO)


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("runtime", [Runtime.ONNXRUNTIME, Runtime.OPENVINO])
def test_each_runtime_reproduces_onnxruntime_on_the_shipped_model(
    name: str, runtime: Runtime
) -> None:
    card, path = shipped_card(name)
    batch = gate_inputs(card)  # (4, C, H, W) through the card's own preprocessing
    assert batch.shape == (4, card.input.channels, *card.input.size)
    assert float(batch.std()) > 0.05  # images, not a constant
    reference = reference_outputs(card, path, batch)
    session = open_session(path, runtime)
    assert session.runtime is runtime
    names = [o.name for o in card.outputs]
    outputs = run_batched(session, card.input.name, batch, names, chunk=3)  # chunking too
    report = compare(reference, outputs, card_tolerance(card), f"{name} on {runtime.value}")
    assert report.ok, report.describe()
    assert report.max_abs_prob_diff <= card.parity.tolerance
    single = session.run(names, {card.input.name: batch[:1]})
    assert np.allclose(single[0], outputs[names[0]][:1], atol=1e-4)


def test_openvino_runs_at_float32_precision() -> None:
    _, path = shipped_card()
    session = open_session(path, Runtime.OPENVINO)
    assert isinstance(session, OpenVinoSession)
    assert str(session.compiled.get_property("INFERENCE_PRECISION_HINT")) in {
        "f32",
        "<Type: 'float32'>",
    }


needs_two_cores = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="one core: no second form to spread runs over"
)


@needs_two_cores
@pytest.mark.parametrize("name", SHIPPED)
def test_openvino_keeps_a_one_core_per_run_form_where_runs_overlap(name: str) -> None:
    """``concurrent``: a THROUGHPUT form (a stream per core) beside the LATENCY one; both give
    the outputs of the latency form (bit-identical on the shipped files) and pass the gate."""
    card, path = shipped_card(name)
    session = open_session(path, Runtime.OPENVINO, RuntimeOptions(concurrent=2))
    assert isinstance(session, OpenVinoSession) and session.spread
    latency, spread = session.forms()
    assert str(latency._form.compiled.get_property("PERFORMANCE_HINT")) == "LATENCY"  # type: ignore[attr-defined]
    assert str(spread._form.compiled.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"  # type: ignore[attr-defined]
    assert int(spread._form.compiled.get_property("NUM_STREAMS")) == 2  # type: ignore[attr-defined]
    batch = gate_inputs(card)
    names = [o.name for o in card.outputs]
    one = run_batched(latency, card.input.name, batch, names)
    other = run_batched(spread, card.input.name, batch, names)
    for output in names:
        np.testing.assert_allclose(other[output], one[output], atol=1e-6)
    assert gate(card, session, reference_outputs(card, path, batch), batch).ok


def test_openvino_keeps_one_form_where_runs_do_not_overlap() -> None:
    _, path = shipped_card()
    for options in (RuntimeOptions(), RuntimeOptions(concurrent=2, threads=1)):
        session = open_session(path, Runtime.OPENVINO, options)
        assert isinstance(session, OpenVinoSession)
        assert not session.spread and len(session.forms()) == 1


@needs_two_cores
def test_a_run_alone_takes_every_core_and_a_run_beside_other_work_takes_one() -> None:
    """The latency form serves a run while no other thread works on a request; while another
    thread holds ``WORK`` (decoding, post-processing, another run) the spread form does."""
    card, path = shipped_card()
    session = open_session(path, Runtime.OPENVINO, RuntimeOptions(concurrent=2))
    assert isinstance(session, OpenVinoSession)
    served: list[str] = []
    for label, form in (("latency", session._latency), ("spread", session._spread)):
        infer = form.infer  # type: ignore[union-attr]

        def spy(names: Sequence[str], feeds: Mapping[str, np.ndarray], *, _l=label, _i=infer):  # type: ignore[no-untyped-def]
            served.append(_l)
            return _i(names, feeds)

        form.infer = spy  # type: ignore[union-attr,method-assign]
    names = [o.name for o in card.outputs]
    feeds = {card.input.name: gate_inputs(card, n=1)}
    with WORK.held(), WORK.held():  # nested in one thread: still one thread at work
        assert WORK.threads() == 1
        session.run(names, feeds)
    working, release = threading.Event(), threading.Event()

    def other_request() -> None:
        with WORK.held():
            working.set()
            release.wait(10)

    thread = threading.Thread(target=other_request)
    thread.start()
    try:
        assert working.wait(10)
        with WORK.held():
            assert WORK.threads() == 2
            session.run(names, feeds)
    finally:
        release.set()
        thread.join()
    assert WORK.threads() == 0
    session.run(names, feeds)
    assert served == ["latency", "spread", "latency"]


class _TwoForms(Session):
    """A session whose second form adds ``shift`` to the first's outputs."""

    def __init__(self, inner: Session, shift: float) -> None:
        self.runtime, self.path, self.device = inner.runtime, inner.path, inner.device
        self.inner, self.shift = inner, shift

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self.inner.run(names, feeds)

    def forms(self) -> tuple[Session, ...]:
        return (self, _Shifted(self.inner, self.shift))


class _Shifted(_TwoForms):
    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [v + np.float32(self.shift) for v in self.inner.run(names, feeds)]

    def forms(self) -> tuple[Session, ...]:
        return (self,)


def test_the_gate_checks_every_form_of_a_session() -> None:
    card, path = shipped_card()
    batch = gate_inputs(card)
    reference = reference_outputs(card, path, batch)
    inner = open_session(path, Runtime.OPENVINO)
    assert gate(card, _TwoForms(inner, 0.0), reference, batch).ok
    report = gate(card, _TwoForms(inner, 5.0), reference, batch)  # logits moved: the 2nd form
    assert not report.ok and report.max_abs_prob_diff > card.parity.tolerance, report.describe()


def test_a_runtime_that_does_not_import_is_a_typed_error() -> None:
    """In a process where ``openvino`` cannot be imported, asking for it names the fix."""
    _, path = shipped_card()
    code = (
        "import sys; sys.modules['openvino'] = None\n"
        "from models_registry.card import Runtime\n"
        "from models_registry.errors import RuntimeUnavailableError\n"
        "from models_registry.runtime import installed_runtimes, open_session\n"
        "print([r.value for r in installed_runtimes()])\n"
        "try:\n"
        f"    open_session({str(path)!r}, Runtime.OPENVINO)\n"
        "except RuntimeUnavailableError as exc:\n"
        "    print(exc.code, exc.http_status, exc.message)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    listed, error = done.stdout.strip().splitlines()
    assert listed == "['onnxruntime']"
    assert error.startswith("runtime_unavailable 503 runtime 'openvino' is not installed")
    assert "BREASTDX_RUNTIME" in error


def test_gate_fails_a_runtime_on_a_card_with_no_tolerance() -> None:
    """OpenVINO differs from ONNX Runtime by ~1e-7: within every shipped tolerance, not 0."""
    card, path = shipped_card()
    strict = card.model_copy(update={"parity": Parity(**zero_tolerance(card)["parity"])})
    batch = gate_inputs(card)
    reference = reference_outputs(card, path, batch)
    session = open_session(path, Runtime.OPENVINO)
    assert gate(card, session, reference, batch).ok
    report = gate(strict, session, reference, batch)
    assert not report.ok and 0.0 < report.max_abs_prob_diff < 1e-4, report.describe()


def test_verify_runs_the_gate_for_each_allowed_runtime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    register_copy(store)
    assert models_main(["verify", "--store", str(store), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["reports"][0]
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["runtime openvino"]["ok"]
    assert (
        "onnxruntime (CPU) vs openvino (CPU) on 4 image(s)" in checks["runtime openvino"]["detail"]
    )
    assert models_main(["verify", "--store", str(store), "--json", "--no-runtimes"]) == 0
    skipped = json.loads(capsys.readouterr().out)["reports"][0]["checks"]
    assert "runtime openvino" not in {c["name"] for c in skipped}


def test_verify_fails_a_runtime_that_misses_the_cards_tolerance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card, _ = shipped_card()
    store = tmp_path / "store"
    register_copy(store, **zero_tolerance(card))
    assert models_main(["verify", "--store", str(store)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL  ultrasound-unet@1")
    assert "runtime openvino: onnxruntime (CPU) vs openvino (CPU)" in out and "tolerance 0)" in out


def test_verify_skips_runtimes_the_card_does_not_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card, _ = shipped_card()
    only_ort = [
        RuntimeParity(
            runtime=Runtime.ONNXRUNTIME, device="CPUExecutionProvider", parity=card.parity
        )
    ]
    store = tmp_path / "store"
    register_copy(
        store, runtimes=[r.model_dump(mode="json") for r in only_ort], **zero_tolerance(card)
    )
    assert models_main(["verify", "--store", str(store), "--json"]) == 0  # openvino not allowed
    checks = json.loads(capsys.readouterr().out)["reports"][0]["checks"]
    assert "runtime openvino" not in {c["name"] for c in checks}


def test_a_card_listing_runtimes_must_list_onnxruntime(tmp_path: Path) -> None:
    card, _ = shipped_card()
    openvino_only = [{"runtime": "openvino", "device": "CPU", "parity": card.parity.model_dump()}]
    with pytest.raises(InvalidCardError, match="runtimes must include onnxruntime"):
        register_copy(tmp_path / "store", runtimes=openvino_only)
