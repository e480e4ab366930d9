"""``BREASTDX_RUNTIME`` in the service, on a copy of the shipped ultrasound model.

openvino really runs OpenVINO (the result and ``/v1/models`` say so); auto never picks a runtime
that fails the parity gate (a card with no tolerance makes OpenVINO's ~1e-7 difference fail);
an explicit runtime that fails the gate, is not allowed by the card or is not installed is a
typed readiness or startup error, never a silent fallback; a bad value is a settings error.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models_registry.card import Runtime, Stage
from models_registry.errors import RuntimeNotAllowedError, RuntimeParityError
from models_registry.registry import Registry
from models_registry.runtime import OpenVinoSession, OrtSession
from service.app import create_app
from service.config import Settings, SettingsError, load_settings
from service.inference import clear_runners, get_runner
from service.inference.runner import RunnerOptions, loaded_selections
from service.inference.runtime_choice import (
    AUTO,
    AUTO_TIE,
    _fastest,
    median_ms_each,
    parse_runtime,
)
from service.jobs.execute import runner_options
from service.worker import warm_up
from tests.conftest import REPO_ROOT
from tests.runtime_support import register_copy, shipped_card, zero_tolerance
from tests.service import jobs_support as js

MODEL = "ultrasound-unet"


@pytest.fixture(autouse=True)
def _fresh_runners() -> Iterator[None]:
    clear_runners()
    yield
    clear_runners()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("runtime") / "store"
    register_copy(path)
    return path


@pytest.fixture(scope="module")
def strict_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model, its card allowing no difference at all from ONNX Runtime on CPU."""
    card, _ = shipped_card()
    path = tmp_path_factory.mktemp("strict") / "store"
    register_copy(path, **zero_tolerance(card))
    return path


def client(store: Path, **overrides: Any) -> TestClient:
    return TestClient(create_app(Settings(model_store=store, allow_anonymous=True, **overrides)))


def analyse(api: TestClient) -> dict[str, Any]:
    """One ultrasound image, once the app's start-up warm-up (the runtime's gate) is done."""
    js.ready(api, timeout_s=300)
    response = api.post(
        "/v1/ultrasound/analyses",
        files=[("file", ("scan", js.ultrasound_png(3), "application/octet-stream"))],
        headers={"Prefer": "wait=60"},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_breastdx_runtime_openvino_runs_openvino(store: Path) -> None:
    with client(store, runtime="openvino") as api:
        result = analyse(api)["result"][0]
        assert result["model"]["runtime"] == "openvino" and result["model"]["device"] == "CPU"
        (served,) = api.get("/v1/models").json()["models"]
    assert served["runtime"]["requested"] == "openvino"
    assert served["runtime"]["runtime"] == "openvino" and served["runtime"]["device"] == "CPU"
    (trial,) = served["runtime"]["trials"]
    assert trial.startswith("openvino (CPU): parity passed (max |prob diff| ")
    runner = get_runner(MODEL, Registry([store]), RunnerOptions(runtime=Runtime.OPENVINO))
    assert isinstance(runner.session, OpenVinoSession)


def test_breastdx_runtime_onnxruntime_runs_onnxruntime(store: Path) -> None:
    with client(store, runtime="onnxruntime") as api:
        model = analyse(api)["result"][0]["model"]
    assert model["runtime"] == "onnxruntime" and model["device"] == "CPUExecutionProvider"


def test_a_stage_runtime_overrides_breastdx_runtime_for_its_stage_only(store: Path) -> None:
    """``BREASTDX_STAGE_RUNTIMES``: the named stage's model runs on its entry; a stage it does
    not name keeps ``BREASTDX_RUNTIME``."""
    with client(store, runtime="openvino", stage_runtimes={"ultrasound": "onnxruntime"}) as api:
        model = analyse(api)["result"][0]["model"]
        (served,) = api.get("/v1/models").json()["models"]
    assert model["runtime"] == "onnxruntime" and served["runtime"]["requested"] == "onnxruntime"
    clear_runners()
    with client(store, runtime="openvino", stage_runtimes={"histopathology": "onnxruntime"}) as api:
        model = analyse(api)["result"][0]["model"]
    assert model["runtime"] == "openvino"


def test_a_queue_worker_warms_each_stage_on_its_own_runtime(tmp_path: Path) -> None:
    """The worker's start-up load honours the stage's runtime: one the card does not allow
    stops it (no silent fallback), another stage's entry leaves this one on the default."""
    card, _ = shipped_card()
    only_ort = [{"runtime": "onnxruntime", "device": "CPUExecutionProvider",
                 "parity": card.parity.model_dump(mode="json")}]  # fmt: skip
    registry = register_copy(tmp_path / "store", runtimes=only_ort)
    settings = Settings(model_store=tmp_path / "store", stage_runtimes={"ultrasound": "openvino"})
    with pytest.raises(RuntimeNotAllowedError, match="not 'openvino'"):
        warm_up(settings, registry, [Stage.ULTRASOUND])
    clear_runners()
    other = settings.model_copy(update={"stage_runtimes": {Stage.MAMMOGRAPHY: "openvino"}})
    assert warm_up(other, registry, [Stage.ULTRASOUND]) == [f"{MODEL}@1"]
    default = parse_runtime(other.runtime)  # BREASTDX_RUNTIME (the suite pins onnxruntime)
    assert runner_options(other, Stage.ULTRASOUND).runtime == default
    assert runner_options(other, "mammography").runtime == Runtime.OPENVINO
    assert runner_options(other).runtime == default  # no stage: BREASTDX_RUNTIME


def test_auto_times_every_passing_runtime_and_keeps_the_fastest(store: Path) -> None:
    """The fastest, where a runtime earlier in the fixed order is not within ``AUTO_TIE``."""
    runner = get_runner(MODEL, Registry([store]), RunnerOptions(runtime=AUTO))
    trials = {t.runtime: t for t in runner.selection.trials}
    assert list(trials) == [Runtime.ONNXRUNTIME, Runtime.OPENVINO]  # the fixed order
    assert all(t.passed and t.model_ms is not None and t.model_ms > 0 for t in trials.values())
    best = min(t.model_ms or 0.0 for t in trials.values())
    tied = [r for r, t in trials.items() if (t.model_ms or 0.0) <= best * (1 + AUTO_TIE)]
    assert runner.runtime is tied[0]
    again = get_runner(MODEL, Registry([store]), RunnerOptions(runtime=AUTO, intra_op_threads=1))
    assert again is not runner and again.runtime is runner.runtime  # one choice per process
    assert again.selection.trials == runner.selection.trials


class _Timed:
    """A stand-in session: only its identity matters to the choice."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime


def test_auto_breaks_near_ties_by_a_fixed_order() -> None:
    """Runtimes within ``AUTO_TIE`` (10 %) of the fastest tie, and the first in the candidates'
    fixed order (reference first, float32 before reduced precision) wins: two processes whose
    timings differ by noise choose alike; a clearly faster runtime still wins."""
    order = [Runtime.ONNXRUNTIME, Runtime.OPENVINO, Runtime.ONNXRUNTIME_INT8, Runtime.OPENVINO_INT8]
    sessions: list[Any] = [_Timed(r) for r in order]
    assert _fastest(sessions, [10.0, 9.0, 5.4, 5.0]).runtime is Runtime.ONNXRUNTIME_INT8
    assert _fastest(sessions, [10.0, 9.0, 5.6, 5.0]).runtime is Runtime.OPENVINO_INT8
    assert _fastest(sessions[:2], [10.0, 9.5]).runtime is Runtime.ONNXRUNTIME  # within 10 %
    assert _fastest(sessions[:2], [10.0, 8.0]).runtime is Runtime.OPENVINO
    assert 0.09 < AUTO_TIE < 0.11


class _Clocked:
    """A stand-in session that takes ``ms`` a run on a shared clock, more while a burst of
    other work lasts (the clock's first ``burst_runs`` timed runs, whichever session runs)."""

    def __init__(self, runtime: Runtime, ms: float, clock: dict[str, float]) -> None:
        self.runtime, self.ms, self.clock = runtime, ms, clock

    def run(self, names: Any, feeds: Any) -> list[Any]:
        slow = self.clock["warm"] >= 2 * 3 and self.clock["burst_runs"] > 0  # after warm-ups
        self.clock["warm"] += 1
        self.clock["burst_runs"] -= slow
        self.clock["now"] += (self.ms + (40.0 if slow else 0.0)) / 1000.0
        return []


def test_auto_times_the_candidates_interleaved_so_a_burst_slows_them_alike(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of other work over the first 6 timed runs: timed one runtime after the other it
    would fall on OpenVINO's 7 runs alone (median 48 ms against 12: ONNX Runtime chosen); timed
    in rounds it falls on both alike and the medians stay 8 and 12."""
    import service.inference.runtime_choice as choice

    clock = {"now": 0.0, "warm": 0, "burst_runs": 6}
    monkeypatch.setattr(choice.time, "perf_counter", lambda: clock["now"])
    card = Registry([store]).card(MODEL)
    fast, slow = _Clocked(Runtime.OPENVINO, 8.0, clock), _Clocked(Runtime.ONNXRUNTIME, 12.0, clock)
    sessions: list[Any] = [fast, slow]
    medians = median_ms_each(sessions, card, np.zeros((1, 1, 8, 8), np.float32))
    assert medians == pytest.approx([8.0, 12.0])
    assert _fastest(sessions, [8.0, 12.0]) is fast


def test_auto_chooses_at_start_not_on_the_first_request(store: Path) -> None:
    with client(store, runtime="auto") as api:
        assert js.ready(api, timeout_s=300).status_code == 200  # before any request
        chosen = loaded_selections()[f"{MODEL}@1"]
        assert chosen.requested == AUTO
        assert {t.runtime for t in chosen.trials} == {Runtime.ONNXRUNTIME, Runtime.OPENVINO}
        model = analyse(api)["result"][0]["model"]
        assert loaded_selections()[f"{MODEL}@1"] is chosen  # the request made no new choice
    assert model["runtime"] == chosen.runtime.value


def test_auto_never_picks_a_runtime_that_fails_the_gate(strict_store: Path) -> None:
    runner = get_runner(MODEL, Registry([strict_store]), RunnerOptions(runtime=AUTO))
    trials = {t.runtime: t for t in runner.selection.trials}
    openvino = trials[Runtime.OPENVINO]
    assert openvino.parity is not None and not openvino.passed and openvino.model_ms is None
    assert openvino.parity.max_abs_prob_diff > 0.0  # a real difference, held to tolerance 0
    assert runner.runtime is Runtime.ONNXRUNTIME and isinstance(runner.session, OrtSession)
    assert trials[Runtime.ONNXRUNTIME].model_ms is None  # only one passed: nothing timed


def test_an_explicit_runtime_that_fails_the_gate_is_not_ready(strict_store: Path) -> None:
    with pytest.raises(RuntimeParityError, match="does not reproduce ONNX Runtime on CPU"):
        get_runner(MODEL, Registry([strict_store]), RunnerOptions(runtime=Runtime.OPENVINO))
    with client(strict_store, runtime="openvino") as api:
        ready = js.ready(api)
        assert ready.status_code == 503
        models = {c["name"]: c for c in ready.json()["checks"]}["models"]
        assert not models["ok"] and "openvino (CPU) does not reproduce" in models["detail"]
        response = api.post(
            "/v1/ultrasound/analyses",
            files=[("file", ("scan", js.ultrasound_png(3), "application/octet-stream"))],
            headers={"Prefer": "wait=60"},
        )
    body = response.json()
    failure = body.get("error") or body  # a failed job, or the problem document itself
    assert "runtime_parity_failed" in str(failure), body


def test_readiness_names_the_runtime_each_model_runs_on(store: Path) -> None:
    with client(store, runtime="openvino") as api:
        ready = js.ready(api)
    assert ready.status_code == 200
    models = {c["name"]: c for c in ready.json()["checks"]}["models"]
    assert f"ultrasound: {MODEL}@1 on openvino (CPU)" in models["detail"]


def test_a_runtime_the_card_does_not_allow_is_refused(tmp_path: Path) -> None:
    card, _ = shipped_card()
    only_ort = [{"runtime": "onnxruntime", "device": "CPUExecutionProvider",
                 "parity": card.parity.model_dump(mode="json")}]  # fmt: skip
    registry = register_copy(tmp_path / "store", runtimes=only_ort)
    with pytest.raises(RuntimeNotAllowedError, match="lets it run on onnxruntime, not 'openvino'"):
        get_runner(MODEL, registry, RunnerOptions(runtime=Runtime.OPENVINO))
    auto = get_runner(MODEL, registry, RunnerOptions(runtime=AUTO))
    assert [t.runtime for t in auto.selection.trials] == [Runtime.ONNXRUNTIME]


def test_a_bad_breastdx_runtime_is_a_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BREASTDX_RUNTIME", "tensorrt")
    with pytest.raises(SettingsError) as caught:
        load_settings(Settings, "BREASTDX_")
    assert "BREASTDX_RUNTIME" in caught.value.message
    assert all(name in caught.value.message for name in ("auto", "onnxruntime", "openvino"))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{"brain": "openvino"}', "BREASTDX_STAGE_RUNTIMES[brain]: Input should be 'mammography'"),
        (
            '{"ultrasound": "tensorrt"}',
            "BREASTDX_STAGE_RUNTIMES[ultrasound]: Input should be 'auto'",
        ),
        ("histopathology=openvino", "BREASTDX_STAGE_RUNTIMES: not valid JSON"),
    ],
)
def test_a_bad_stage_runtime_is_a_settings_error_naming_it(
    value: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BREASTDX_STAGE_RUNTIMES", value)
    with pytest.raises(SettingsError) as caught:
        load_settings(Settings, "BREASTDX_")
    assert caught.value.message.startswith(f"invalid settings: {message}")


def _serve(env: dict[str, str], block_openvino: bool = False) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys; sys.modules['openvino'] = None\n" if block_openvino else ""
    ) + "from service.cli import serve_main\nraise SystemExit(serve_main(['--port', '1']))\n"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_serve_refuses_to_start_on_a_bad_or_missing_runtime() -> None:
    bad = _serve({"BREASTDX_RUNTIME": "tensorrt"})
    assert bad.returncode == 1 and "BREASTDX_RUNTIME" in bad.stderr, bad.stderr
    missing = _serve({"BREASTDX_RUNTIME": "openvino"}, block_openvino=True)
    assert missing.returncode == 1, missing.stderr
    assert "runtime 'openvino' is not installed" in missing.stderr
    one_stage = _serve({"BREASTDX_STAGE_RUNTIMES": '{"histopathology": "openvino-int8"}'},
                       block_openvino=True)  # fmt: skip
    assert one_stage.returncode == 1, one_stage.stderr
    assert "runtime 'openvino-int8' is not installed" in one_stage.stderr
