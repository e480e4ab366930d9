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
from service.errors import UnknownHookError, UploadExpiredError
from service.inference.result import Analysis
from service.jobs import JobRecord, get_job, register_hook, submit_analysis
from service.jobs.backend import close_backend, get_backend
from service.jobs.hooks import HOOKS, StoredArtefact
from service.jobs.queue import queue_name
from service.jobs.state import InputInfo, JobState
from service.jobs.store import JobStore, KeyValue, MemoryKeyValue, RedisKeyValue, Ttls
from service.jobs.tasks import LeaseRenewer
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
    kv.write([({"a": b"1"}, 1)])
    assert kv.get("a") == b"1" and kv.ttl("a") in {0, 1}
    assert kv.set_nx("n", b"x", 60) and not kv.set_nx("n", b"y", 60)
    assert [kv.incr("c", 60) for _ in range(3)] == [1, 2, 3]
    time.sleep(1.1)
    assert kv.get("a") is None and kv.ttl("a") is None


def _attempt_store(kind: str, db: redis.Redis) -> tuple[JobStore, list[str]]:
    """A job store over ``kind`` (memory or the test Redis) and the final announcements it
    makes (memory: heard by subscription; Redis: by a pub/sub client, read on demand)."""
    heard: list[str] = []
    kv: KeyValue
    if kind == "memory":
        kv = MemoryKeyValue()
        kv.subscribe(f"{NS}:job-final", heard.append)
    else:
        kv = RedisKeyValue(db)
    return JobStore(kv, NS, Ttls(result=600, failure=900, upload=300, lease=30)), heard


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_an_attempt_starts_and_finishes_in_one_write_each(
    kind: str, db: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, heard = _attempt_store(kind, db)
    sent: list[int] = []  # Redis round trips (commands or pipelines sent)
    original = redis.connection.AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    pubsub = db.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"{NS}:job-final")
    inputs = [b"first", b"second"]
    infos = [InputInfo(index=i, size_bytes=len(d), sha256="0" * 64) for i, d in enumerate(inputs)]
    record = JobRecord(id="j1", stage=Stage.ULTRASOUND, model_ref="m@1", inputs=infos)
    store.create(record, inputs)
    assert store.get("j1") == record and store.inputs(record) == inputs
    running = record.model_copy(update={"state": JobState.RUNNING, "attempts": 1})
    before = len(sent)
    store.start(running, "worker-a")
    assert len(sent) - before == (1 if kind == "redis" else 0)  # lease and record together
    assert store.get("j1") == running and store.lease_holder("j1") == "worker-a"
    assert store.kv.get_many([store.key("j1", "input", 1), "absent"]) == [b"second", None]
    done = running.model_copy(update={"state": JobState.SUCCEEDED, "done": 2})
    images = [{"mask": b"m0"}, {"mask": b"m1", "display": b"d1"}]
    before = len(sent)
    store.finish(done, ['{"a": 0}', '{"a": 1}'], images, [{"sr": b"s0"}, {}])
    assert len(sent) - before == (1 if kind == "redis" else 0)  # one transaction
    assert store.get("j1") == done and store.results("j1") == [{"a": 0}, {"a": 1}]
    assert store.artefact("j1", "display", 1) == b"d1" and store.artefact("j1", "sr", 0) == b"s0"
    assert store.lease_holder("j1") is None  # the lease went with the final record
    with pytest.raises(UploadExpiredError, match="input 0 of job j1 is gone"):
        store.inputs(done)  # the uploads too
    if kind == "redis":
        assert 590 <= db.ttl(store.key("j1")) <= 600  # a succeeded record: the results' TTL
        assert 590 <= db.ttl(store.key("j1", "mask", 0)) <= 600
        message = js.wait_until(lambda: pubsub.get_message(timeout=0.1), 5)
        heard.append(message["data"].decode())
    pubsub.close()
    assert heard == ["j1"]  # announced once, when final


def test_the_lease_renewer_renews_each_held_lease_until_its_deadline(db: redis.Redis) -> None:
    store = JobStore(RedisKeyValue(db), NS, Ttls(result=60, failure=60, upload=60, lease=2))
    renewer = LeaseRenewer()  # renews every max(0.5, lease / 3) s
    lease = store.key("j2", "lease")
    with renewer.holding(store, "j2", "worker-b", deadline_s=30):
        store.renew_lease("j2", "worker-b")
        time.sleep(3.0)  # longer than the 2 s lease: alive only if renewed
        assert store.lease_holder("j2") == "worker-b" and db.pttl(lease) > 1000
    time.sleep(2.5)
    assert store.lease_holder("j2") is None  # no longer held: not renewed, expired
    with renewer.holding(store, "j3", "worker-b", deadline_s=0.1):
        store.renew_lease("j3", "worker-b")
        time.sleep(3.0)  # past its deadline (a call stuck in native code): left to expire
        assert store.lease_holder("j3") is None


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
