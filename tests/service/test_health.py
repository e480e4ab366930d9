"""Health, readiness and problem documents, in process and as a real server process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.inference.runner import cached_refs, clear_runners, loaded_selections
from tests.conftest import REPO_ROOT
from tests.service import jobs_support as js


def _client(tmp_path: Path, **overrides: object) -> TestClient:
    settings = Settings(model_store=tmp_path / "store", **overrides)  # type: ignore[arg-type]
    return TestClient(create_app(settings))


def test_healthz_answers(tmp_path: Path) -> None:
    response = _client(tmp_path).get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_readyz_reports_missing_models_as_not_ready(tmp_path: Path) -> None:
    response = _client(tmp_path).get("/readyz")
    assert response.status_code == 503
    checks = {c["name"]: c for c in response.json()["checks"]}
    assert checks["models"]["ok"] is False
    assert "no ONNX models" in checks["models"]["detail"]


def test_readyz_reports_unreachable_redis(tmp_path: Path) -> None:
    response = _client(tmp_path, redis_url="redis://127.0.0.1:1/0").get("/readyz")
    checks = {c["name"]: c for c in response.json()["checks"]}
    assert response.status_code == 503
    assert checks["queue"]["ok"] is False


def test_readyz_waits_for_the_start_up_warm_up_and_requests_find_the_model_warm(
    tmp_path: Path,
) -> None:
    """In process, the app's start opens each served model on its runtime and runs a batch
    through it in the background; /readyz is not ready until then, and a request after it
    reuses that runner (the runtime choice, under auto, is not made again)."""
    store = js.build_slow_store(tmp_path)
    clear_runners()
    try:
        with TestClient(create_app(Settings(model_store=store, allow_anonymous=True))) as api:
            first = api.get("/readyz")  # the warm-up runs the slow model for seconds
            assert first.status_code == 503
            models = {c["name"]: c for c in first.json()["checks"]}["models"]
            assert models["detail"].startswith("warming up"), models
            assert api.get("/healthz").status_code == 200  # alive meanwhile
            ready = js.ready(api, timeout_s=300)
            assert ready.status_code == 200, ready.json()
            assert cached_refs() == ["mg-slow@1"]  # loaded before any request
            warmed = loaded_selections()["mg-slow@1"]
            response = api.post(
                "/v1/mammography/analyses",
                files=[("file", ("film", js.mammogram_png(), "application/octet-stream"))],
                headers={"Prefer": "wait=60"},
            )
            assert response.status_code == 200, response.text
            assert loaded_selections()["mg-slow@1"] is warmed
    finally:
        clear_runners()


def test_unknown_route_is_a_problem_document(tmp_path: Path) -> None:
    response = _client(tmp_path).get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == "urn:breastdx:problem:not_found"
    assert body["status"] == 404


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.integration
def test_serve_command_starts_a_real_server(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "BREASTDX_MODEL_STORE": str(tmp_path / "store")}
    env.pop("BREASTDX_REDIS_URL", None)
    cmd = [sys.executable, "-m", "breastdx.cli", "serve", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120  # imports alone take a minute on a loaded machine
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()  # reading the stderr of a live server would wait for ever
                    _, err = proc.communicate(timeout=10)
                    raise AssertionError(err.decode()) from exc
                time.sleep(0.2)
        assert response.status_code == 200
        assert response.json()["status"] == "ok"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
