"""The job store, the queue and submission against a real Redis (no worker): TTLs, RQ options,
idempotency, Redis down, lost jobs, hooks, and the memory store of the in-process mode."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from rq import Queue
from rq.job import Job

from breastdx.cli import main as breastdx_main
from models_registry.card import Stage
from service.app import create_app
from service.config import Settings, get_settings
from service.errors import UnknownHookError
from service.inference.result import Analysis
from service.jobs import JobRecord, get_job, register_hook, submit_analysis
from service.jobs.backend import close_backend, get_backend
from service.jobs.hooks import HOOKS, StoredArtefact
from service.jobs.queue import queue_name
from service.jobs.store import MemoryKeyValue
from tests.service import jobs_support as js

NS = "t-jobs"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return js.build_store(tmp_path_factory.mktemp("jobs"))


@pytest.fixture
def settings(store: Path, db: redis.Redis) -> Iterator[Settings]:
    settings = Settings(
        model_store=store,
        redis_url=js.TEST_REDIS_URL,
        namespace=NS,
        allow_anonymous=True,
        result_ttl_s=600,
        failure_ttl_s=900,
        upload_ttl_s=300,
        job_timeout_s=120,
    )
    yield settings
    close_backend(settings)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def post(client: TestClient, *images: bytes, **headers: str) -> Any:
    parts = [("file", (f"i{n}", data, "image/png")) for n, data in enumerate(images)]
    return client.post("/v1/ultrasound/analyses", files=parts, headers=headers)


def test_submission_stores_record_and_uploads_with_ttls(
    client: TestClient, db: redis.Redis, settings: Settings
) -> None:
    response = post(client, js.ultrasound_png(1), js.ultrasound_png(2))
    assert response.status_code == 202
    job_id = response.json()["id"]
    assert 880 <= db.ttl(f"{NS}:job:{job_id}") <= 900
    for index in (0, 1):
        assert 280 <= db.ttl(f"{NS}:job:{job_id}:input:{index}") <= 300
    assert db.get(f"{NS}:job:{job_id}:input:0") == js.ultrasound_png(1)
    queue = Queue(queue_name(settings, Stage.ULTRASOUND), connection=db)
    assert queue.job_ids == [job_id]
    job = Job.fetch(job_id, connection=db)
    assert job.func_name == "service.jobs.tasks.run_analysis" and job.args == (job_id,)
    assert (job.timeout, job.result_ttl, job.failure_ttl, job.ttl) == (120, 600, 900, 300)
    assert job.retries_left == 3 and job.retry_intervals == [1, 5, 15]
    record = JobRecord.model_validate_json(db.get(f"{NS}:job:{job_id}") or b"")
    assert record.model_ref == "us-tiny@1" and [i.size_bytes for i in record.inputs] == [
        len(js.ultrasound_png(1)),
        len(js.ultrasound_png(2)),
    ]


def test_idempotency_key_returns_the_same_job(client: TestClient, db: redis.Redis) -> None:
    image = js.ultrasound_png(4)
    first = post(client, image, **{"Idempotency-Key": "order-17"})
    again = post(client, image, **{"Idempotency-Key": "order-17"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert len(list(js.keys(db, f"{NS}:job:*:input:0"))) == 1
    other = post(client, js.ultrasound_png(5), **{"Idempotency-Key": "order-17"})
    assert other.status_code == 422
    assert other.json()["type"] == "urn:breastdx:problem:idempotency_key_reused"
    fresh = post(client, image, **{"Idempotency-Key": "order-18"})
    assert fresh.json()["id"] != first.json()["id"]


def test_idempotency_is_scoped_per_api_key(settings: Settings) -> None:
    image = js.ultrasound_png(6)
    a = submit_analysis(
        Stage.ULTRASOUND, [image], settings=settings, idempotency_key="k", api_key_id="a"
    )
    b = submit_analysis(
        Stage.ULTRASOUND, [image], settings=settings, idempotency_key="k", api_key_id="b"
    )
    a2 = submit_analysis(
        Stage.ULTRASOUND, [image], settings=settings, idempotency_key="k", api_key_id="a"
    )
    assert a.id != b.id and a2.id == a.id


def test_redis_down_is_503_with_retry_after(store: Path) -> None:
    down = f"redis://127.0.0.1:{js.free_port()}/0"
    settings = Settings(model_store=store, redis_url=down, allow_anonymous=True)
    with TestClient(create_app(settings)) as client:
        for response in (
            post(client, js.ultrasound_png()),
            client.get(f"/v1/analyses/{'a' * 32}"),
            client.get("/v1/models"),
        ):
            assert response.status_code == 503
            assert response.json()["type"] == "urn:breastdx:problem:queue_unavailable"
            assert int(response.headers["retry-after"]) >= 1
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200


def test_a_queued_job_the_queue_lost_fails_with_a_reason(
    client: TestClient, db: redis.Redis
) -> None:
    job_id = post(client, js.ultrasound_png()).json()["id"]
    assert client.get(f"/v1/analyses/{job_id}").json()["state"] == "queued"
    Job.fetch(job_id, connection=db).delete()  # as if it expired in the queue (ttl)
    key = f"{NS}:job:{job_id}"
    record = JobRecord.model_validate_json(db.get(key) or b"")
    old = record.model_copy(update={"created_at": record.created_at - timedelta(minutes=2)})
    db.set(key, old.model_dump_json(), keepttl=True)
    body = client.get(f"/v1/analyses/{job_id}").json()
    assert body["state"] == "failed" and body["error"]["code"] == "job_lost"
    assert not list(js.keys(db, f"{NS}:job:{job_id}:input:*"))


def test_unknown_hook_is_refused_listing_the_valid_ones(settings: Settings) -> None:
    with pytest.raises(UnknownHookError) as caught:
        submit_analysis(Stage.ULTRASOUND, [js.ultrasound_png()], settings=settings, after=["nope"])
    assert caught.value.http_status == 422 and "valid hooks" in caught.value.message


def test_hooks_run_after_success_in_process(store: Path) -> None:
    calls: list[tuple[str, int, list[bytes | None]]] = []

    @register_hook("test-count")
    def count(record: JobRecord, analyses: list[Analysis], stored: StoredArtefact) -> None:
        masks = [stored("mask", i) for i in range(3)]  # the job's stored artefacts
        calls.append((record.id, len(analyses), masks))

    @register_hook("test-broken")
    def broken(record: JobRecord, analyses: list[Analysis], stored: StoredArtefact) -> None:
        raise RuntimeError("delivery failed")

    settings = Settings(model_store=store)
    try:
        record = submit_analysis(
            Stage.ULTRASOUND,
            [js.ultrasound_png(1), js.ultrasound_png(2)],
            settings=settings,
            after=["test-broken", "test-count"],
        )
        done = js.wait_until(lambda: (r := get_job(record.id, settings=settings)).hooks and r, 30)
        assert done.state == "succeeded" and [c[:2] for c in calls] == [(record.id, 2)]
        masks = calls[0][2]
        assert masks[0] and masks[0].startswith(b"\x89PNG") and masks[1] and masks[2] is None
        assert done.hooks == {"test-broken": "error: RuntimeError", "test-count": "ok"}
    finally:
        HOOKS.pop("test-count", None)
        HOOKS.pop("test-broken", None)
        close_backend(settings)


def test_memory_store_expires_and_counts() -> None:
    kv = MemoryKeyValue()
    kv.set_many({"a": b"1"}, ttl_s=1)
    assert kv.get("a") == b"1" and kv.ttl("a") in {0, 1}
    assert kv.set_nx("n", b"x", 60) and not kv.set_nx("n", b"y", 60)
    assert [kv.incr("c", 60) for _ in range(3)] == [1, 2, 3]
    time.sleep(1.1)
    assert kv.get("a") is None and kv.ttl("a") is None


def test_in_process_backend_needs_no_redis(store: Path) -> None:
    settings = Settings(model_store=store)
    try:
        backend = get_backend(settings)
        assert backend.redis is None and backend.executor is not None
        assert get_backend(settings) is backend
    finally:
        close_backend(settings)


def test_worker_command_needs_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BREASTDX_REDIS_URL", raising=False)
    get_settings.cache_clear()
    try:
        assert breastdx_main(["worker", "--burst"]) == 1
    finally:
        get_settings.cache_clear()
