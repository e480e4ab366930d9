"""Property-based requests from the app's own OpenAPI document: no request earns a 5xx.

Schemathesis generates valid (positive) and invalid (negative) requests for every operation:
paths, queries, headers (``Prefer``, ``Idempotency-Key``) and multipart bodies, and sends them to
the in-process app (in-process execution, anonymous access on, tiny models for all three stages
in a temporary store). Free path parameters are fuzzed as they come and also pinned to values
that reach deeper: each real stage for ``POST /v1/{stage}/analyses``, the id of a finished job for
``/v1/analyses/{job_id}...``. The only check is the one the service promises whatever it is sent:
no server error. Bounded: ``MAX_EXAMPLES`` per operation, pin and mode, no deadline,
derandomised so that a failure reproduces; every failing operation is reported, not the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("torch")  # the tiny models are trained to be served

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from models_registry.card import Stage  # noqa: E402
from service.app import create_app  # noqa: E402
from service.config import Settings  # noqa: E402
from service.inference import clear_runners  # noqa: E402
from tests.training import tiny_runs  # noqa: E402

MAX_EXAMPLES = 25


@dataclass(frozen=True)
class Target:
    """The app's OpenAPI schema and the id of a job that succeeded on it."""

    schema: Any
    job_id: str


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Target:
    clear_runners()
    store: Path = tiny_runs.registry(tmp_path_factory).stores[0].root  # type: ignore[attr-defined]
    settings = Settings(
        model_store=store,
        allow_anonymous=True,
        api_keys_file=tmp_path_factory.mktemp("keys") / "api-keys.json",
        rate_limit_requests=0,
        max_wait_s=2,  # a generated 'Prefer: wait=N' must not hold a test for a minute
    )
    app = create_app(settings)
    grey = np.random.default_rng(0).integers(0, 255, (120, 160), dtype=np.uint8)
    image = bytes(cv2.imencode(".png", grey)[1])
    response = TestClient(app).post(  # no lifespan: its end would close the in-memory job store
        "/v1/ultrasound/analyses",
        files={"file": ("image.png", image, "image/png")},
        headers={"Prefer": "wait=2"},
    )
    assert response.status_code == 200 and response.json()["state"] == "succeeded", response.text
    return Target(schemathesis.openapi.from_asgi("/openapi.json", app), response.json()["id"])


def _pins(operation: Any, job_id: str) -> list[dict[str, str]]:
    """Path parameters to pin: none (all fuzzed), then values that pass the router's checks."""
    path = operation.path
    if "{stage}" in path:
        return [{}, *({"stage": stage.value} for stage in Stage)]
    if "{job_id}" in path:
        return [{}, {"job_id": job_id}]
    return [{}]


def _fuzz(operation: Any, mode: GenerationMode, pin: dict[str, str]) -> None:
    """``MAX_EXAMPLES`` generated requests to ``operation``; raises on a 5xx."""

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=pin or None))
    def run(case: Any) -> None:
        case.call_and_validate(checks=[not_a_server_error])

    run()


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_no_generated_request_is_a_server_error(target: Target, mode: GenerationMode) -> None:
    failures = {}
    operations = [result.ok() for result in target.schema.get_all_operations()]
    assert len(operations) >= 5, "the OpenAPI document lacks the /v1 operations"
    for operation in operations:
        for pin in _pins(operation, target.job_id):
            try:
                _fuzz(operation, mode, pin)
            except Unsatisfiable:  # negative mode: nothing left to make invalid
                continue
            except Exception as exc:  # collected, reported together below
                failures[f"{operation.label} {pin}"] = f"{type(exc).__name__}: {str(exc)[:2000]}"
    assert not failures, "\n\n".join(f"{label}\n{text}" for label, text in failures.items())
