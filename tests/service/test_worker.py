"""Real ``breastdx worker`` processes on a real Redis: results, TTLs, retries, timeouts, a
worker killed mid-job, and burst mode."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue
from rq.job import Job, JobStatus
from rq.scheduler import RQScheduler

from service.app import create_app
from service.config import Settings
from service.worker import BreastdxWorker
from tests.service import jobs_support as js

pytestmark = pytest.mark.integration
NS = "t-worker"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return js.build_store(tmp_path_factory.mktemp("worker"))


@pytest.fixture(scope="module")
def worker(store: Path) -> Iterator[subprocess.Popen[bytes]]:
    """One worker for the module, serving every stage queue of namespace ``NS``."""
    js.redis_or_skip().flushdb()
    proc = js.start_worker(js.worker_env(store, NS))
    yield proc
    js.stop_worker(proc)


def api(store: Path, namespace: str = NS, **overrides: Any) -> TestClient:
    settings = Settings(
        model_store=store,
        redis_url=js.TEST_REDIS_URL,
        namespace=namespace,
        allow_anonymous=True,
        **overrides,
    )
    return TestClient(create_app(settings))


@pytest.fixture
def client(store: Path, worker: subprocess.Popen[bytes], db: redis.Redis) -> Iterator[TestClient]:
    with api(store) as client:
        yield client


def submit(client: TestClient, stage: str, *images: bytes, query: str = "", **headers: str) -> Any:
    parts = [("file", (f"i{n}", data, "application/octet-stream")) for n, data in enumerate(images)]
    return client.post(f"/v1/{stage}/analyses{query}", files=parts, headers=headers)


POLL_S = 0.55  # the API allows 120 requests a minute per client: polls stay below that


def look(client: TestClient, job_id: str) -> dict[str, Any] | None:
    """The job's record, or None while the API rate-limits this client's polling (429).

    Paced to one request per ``POLL_S``: a job that runs long on a loaded machine must not
    exhaust the client's rate limit (its 429s would hide the job's state)."""
    time.sleep(POLL_S)
    response = client.get(f"/v1/analyses/{job_id}")
    if response.status_code == 429:  # a slow job on a loaded machine: poll again later
        return None
    body: dict[str, Any] = response.json()
    return body


def state(client: TestClient, job_id: str) -> str:
    body: dict[str, Any] = js.wait_until(lambda: look(client, job_id), 30, every_s=0.0)
    value: str = body["state"]
    return value


def final(client: TestClient, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body = look(client, job_id)
        return body if body is not None and body["state"] in {"succeeded", "failed"} else None

    found: dict[str, Any] = js.wait_until(check, timeout_s, every_s=0.0)
    return found


def test_worker_analyses_every_stage_and_cleans_up(client: TestClient, db: redis.Redis) -> None:
    cases = {
        "mammography": [js.mammogram_dicom(), js.mammogram_png(1)],
        "ultrasound": [js.ultrasound_png(2)],
        "histopathology": [js.he_patch(3), js.he_patch(4), js.he_patch(5)],
    }
    accepted = {}
    for stage, images in cases.items():
        response = submit(client, stage, *images)
        assert response.status_code == 202 and response.headers["location"]
        accepted[stage] = response.json()["id"]
    for stage, job_id in accepted.items():
        body = final(client, job_id)
        assert body["state"] == "succeeded", body
        assert len(body["result"]) == len(cases[stage])
        assert {r["batch_size"] for r in body["result"]} == {len(cases[stage])}
        assert not list(js.keys(db, f"{NS}:job:{job_id}:input:*"))  # uploads deleted at the end
        assert 86000 < db.ttl(f"{NS}:job:{job_id}") <= 86400  # result_ttl_s
        assert 86000 < db.ttl(f"{NS}:job:{job_id}:mask:0") <= 86400
        assert Job.fetch(job_id, connection=db).get_status() == JobStatus.FINISHED
    # the worker recorded the durations in Redis; the API's /metrics shows them
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}

    def count(name: str, **labels: str) -> float:
        return sum(
            s.value
            for s in families[name].samples
            if s.name == f"{name}_count" and labels.items() <= s.labels.items()
        )

    for stage in cases:
        assert count("breastdx_job_duration_seconds", stage=stage, state="succeeded") >= 1
        assert count("breastdx_inference_duration_seconds", stage=stage) >= 1


def test_prefer_wait_and_result_images_from_the_worker(client: TestClient, db: redis.Redis) -> None:
    response = submit(client, "mammography", js.mammogram_dicom(160, 128), **{"Prefer": "wait=30"})
    assert response.status_code == 200 and response.headers["preference-applied"] == "wait=30"
    body = response.json()
    assert body["state"] == "succeeded" and body["result"][0]["input"]["format"] == "dicom"
    mask = client.get(body["links"]["mask"])
    pixels = cv2.imdecode(np.frombuffer(mask.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert pixels.shape == (160, 128)
    # the worker stored the display image; the overlay is drawn on the first GET, then kept
    key = f"{NS}:job:{body['id']}"
    assert db.exists(f"{key}:display:0") and not db.exists(f"{key}:overlay:0")
    overlay = client.get(body["links"]["overlay"] + "?index=0")
    assert overlay.status_code == 200 and overlay.content.startswith(b"\x89PNG")
    assert db.get(f"{key}:overlay:0") == overlay.content
    assert 0 < db.ttl(f"{key}:overlay:0") <= db.ttl(f"{key}:results")
    colour = cv2.imdecode(np.frombuffer(overlay.content, np.uint8), cv2.IMREAD_COLOR)
    assert colour.shape == (160, 128, 3)
    assert client.get(body["links"]["overlay"] + "?index=0").content == overlay.content


def test_transient_failure_is_retried_with_backoff(
    client: TestClient, store: Path, db: redis.Redis
) -> None:
    model = store / "mg-flaky" / "1" / "model.onnx"
    hidden = model.with_name("hidden.onnx")
    model.rename(hidden)  # the worker has not loaded mg-flaky: its first attempt fails
    try:
        job_id = submit(client, "mammography", js.mammogram_png(), query="?model=mg-flaky").json()[
            "id"
        ]

        def retrying() -> dict[str, Any] | None:
            body: dict[str, Any] = client.get(f"/v1/analyses/{job_id}").json()
            return body if body["attempts"] == 1 and body["last_error"] else None

        body = js.wait_until(retrying, 30)
        assert body["state"] in {"queued", "running"}
        assert body["last_error"]["code"] == "model_store_error"
        assert body["last_error"]["retryable"] is True
    finally:
        hidden.rename(model)
    done = final(client, job_id)
    assert done["state"] == "succeeded" and done["attempts"] >= 2, done


def test_job_timeout_fails_without_retry(
    store: Path, worker: subprocess.Popen[bytes], db: redis.Redis
) -> None:
    with api(store, job_timeout_s=1) as client:
        response = submit(client, "mammography", js.mammogram_png(), query="?model=mg-slow")
        body = final(client, response.json()["id"])
    assert body["state"] == "failed" and body["attempts"] == 1
    assert body["error"]["code"] == "job_timeout" and "1 s" in body["error"]["detail"]


def test_input_error_in_the_worker_is_not_retried(store: Path, db: redis.Redis) -> None:
    namespace = "t-burst"
    with api(store, namespace) as client:
        job_id = submit(client, "ultrasound", js.ultrasound_png()).json()["id"]
        db.set(f"{namespace}:job:{job_id}:input:0", b"\x00garbage\x00" * 10, keepttl=True)
        proc = js.start_worker(js.worker_env(store, namespace), "--burst", "--queues", "ultrasound")
        try:
            assert proc.wait(timeout=60) == 0
        finally:
            js.stop_worker(proc)
        body = client.get(f"/v1/analyses/{job_id}").json()
    assert body["state"] == "failed" and body["attempts"] == 1
    assert body["error"]["code"] == "unrecognised_format" and body["error"]["input_index"] == 0
    job = Job.fetch(job_id, connection=db)
    assert job.get_status() == JobStatus.FAILED and job.retries_left == 0
    assert not list(js.keys(db, f"{namespace}:job:{job_id}:input:*"))


def test_worker_killed_mid_job_is_retried_never_lost(store: Path, db: redis.Redis) -> None:
    namespace = "t-kill"
    env = js.worker_env(store, namespace, BREASTDX_LEASE_TTL_S="2")
    first = js.start_worker(env, "--queues", "mammography")
    second: subprocess.Popen[bytes] | None = None
    try:
        with api(store, namespace, lease_ttl_s=2) as client:
            job_id = submit(
                client, "mammography", js.mammogram_png(), query="?model=mg-slow"
            ).json()["id"]
            js.wait_until(lambda: state(client, job_id) == "running", timeout_s=60)
            os.kill(first.pid, signal.SIGKILL)  # the worker only: its scheduler child lives on
            first.wait(timeout=10)
            second = js.start_worker(env, "--queues", "mammography")
            body = final(client, job_id, timeout_s=90)
            assert body["state"] == "succeeded", body
            assert body["attempts"] == 2 and body["last_error"]["code"] == "worker_lost"
            workers = {c["name"]: c for c in client.get("/readyz").json()["checks"]}["workers"]
            assert (
                "mammography: " in workers["detail"] and "mammography: 0" not in workers["detail"]
            )
    finally:
        js.stop_worker(first)
        if second is not None:
            js.stop_worker(second)


def test_worker_takes_over_a_scheduler_lock_freed_after_its_start(
    store: Path, db: redis.Redis
) -> None:
    """A worker started while another scheduler held its queue's lock (a killed worker's, still
    stopping) schedules that queue's retries once the lock comes free: within seconds, not at
    RQ's maintenance interval (set to 10 minutes here, so only the take-over can pass)."""
    namespace = "t-lock"
    lock = RQScheduler.get_locking_key(f"{namespace}:mammography")
    db.set(lock, "a-stopping-scheduler", ex=600)
    env = js.worker_env(store, namespace, BREASTDX_MAINTENANCE_INTERVAL_S="600")
    worker = js.start_worker(env, "--queues", "mammography")
    model = store / "mg-flaky" / "1" / "model.onnx"
    hidden = model.with_name("hidden.onnx")
    model.rename(hidden)  # the first attempt fails and is scheduled for a retry 1 s later
    try:
        with api(store, namespace) as client:
            job_id = submit(
                client, "mammography", js.mammogram_png(), query="?model=mg-flaky"
            ).json()["id"]

            def retrying() -> bool:
                body = look(client, job_id) or {}
                return body.get("attempts") == 1 and bool(body.get("last_error"))

            js.wait_until(retrying, 60, every_s=0.0)
            hidden.rename(model)
            assert db.get(lock) == b"a-stopping-scheduler"  # nothing took it while it was held
            db.delete(lock)  # the stopping scheduler releases it
            body = final(client, job_id, timeout_s=60)
        assert body["state"] == "succeeded" and body["attempts"] == 2, body
        assert db.get(lock) not in {None, b"a-stopping-scheduler"}  # the worker's scheduler
    finally:
        if hidden.exists():
            hidden.rename(model)
        js.stop_worker(worker)


def test_a_stopping_worker_waits_seconds_not_a_minute_for_its_pubsub_thread(
    db: redis.Redis,
) -> None:
    """The unlucky order, forced: the pubsub thread reads UNSUBSCRIBE's reply before the stop
    flag is set and goes back to ``get_message(timeout=60)``. RQ's own ``unsubscribe`` then
    waits that minute (measured: 60.0 s); the worker's sets the flag first."""
    worker = BreastdxWorker([Queue("t-pubsub:ultrasound", connection=db)], connection=db)
    worker.subscribe()
    send = worker.pubsub.unsubscribe

    def unlucky(*args: Any, **kwargs: Any) -> Any:
        sent = send(*args, **kwargs)
        time.sleep(0.5)  # the thread reads the reply meanwhile
        return sent

    worker.pubsub.unsubscribe = unlucky  # type: ignore[method-assign]
    began = time.monotonic()
    worker.unsubscribe()
    assert time.monotonic() - began < 10
    assert not worker.pubsub_thread.is_alive()
