"""A real ``breastdx worker`` with lanes (``BREASTDX_WORKER_LANES``) on a real Redis: queued jobs
run at once in one process and micro-batching merges their model runs (window forced on, CPU)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from rq import Worker

from models_registry.registry import Registry
from models_registry.store import DirectoryStore
from service.app import create_app
from service.config import Settings
from service.inference import analyse, clear_runners
from tests.service import jobs_support as js

pytestmark = pytest.mark.integration
NS = "t-lanes"
LANES = 4


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return js.build_store(tmp_path_factory.mktemp("lanes"))


@pytest.fixture
def client(store: Path, db: redis.Redis) -> Iterator[TestClient]:
    settings = Settings(
        model_store=store,
        redis_url=js.TEST_REDIS_URL,
        namespace=NS,
        allow_anonymous=True,
        rate_limit_requests=0,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_lanes_run_queued_jobs_at_once_and_batch_their_model_runs(
    client: TestClient, store: Path, db: redis.Redis
) -> None:
    images = [js.ultrasound_png(seed) for seed in range(LANES)]
    job_ids = []
    for image in images:  # queued before the worker starts: every lane finds one waiting
        files = [("file", ("scan.png", image, "image/png"))]
        response = client.post("/v1/ultrasound/analyses", files=files)
        assert response.status_code == 202, response.text
        job_ids.append(response.json()["id"])
    env = js.worker_env(
        store,
        NS,
        BREASTDX_WORKER_LANES=str(LANES),
        BREASTDX_BATCH_WINDOW_MS="1000",  # wide: the lanes start a few ms apart, more when loaded
        BREASTDX_MAX_BATCH=str(LANES),
    )
    proc = js.start_worker(env)
    try:
        bodies = [js.poll_final(client, f"/v1/analyses/{job_id}", 120) for job_id in job_ids]
        names = {w.name for w in Worker.all(connection=db)}
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=150)  # generous: a loaded CI machine starts and stops slowly
        stop_s = time.monotonic() - stopped_at
    finally:
        js.stop_worker(proc)
    assert [b["state"] for b in bodies] == ["succeeded"] * LANES
    assert len(names) == LANES  # the main worker and its lanes, each an RQ worker
    assert len({name.rsplit("-lane", 1)[0] for name in names}) == 1
    sizes = [b["result"][0]["batch_size"] for b in bodies]
    assert max(sizes) > 1, sizes  # jobs of several requests ran in one model call
    registry = Registry([DirectoryStore(store)])
    try:
        for image, body in zip(images, bodies, strict=True):
            alone = analyse("ultrasound", [image], registry=registry)[0].result
            plain = alone.model_dump(mode="json", exclude={"timings_ms", "batch_size"})
            merged = {k: v for k, v in body["result"][0].items() if k in plain}
            assert merged == plain
    finally:
        clear_runners()
    # idle lanes stop within a dequeue timeout, each RQ worker's pubsub thread within
    # PUBSUB_STOP_S (a minute before PromptPubsubStop, now and then); room for a loaded machine
    assert proc.returncode == 0 and stop_s < 30, stop_s


@pytest.mark.parametrize("kind", ["main", "lane"])
def test_a_heartbeat_is_one_round_trip_and_still_beats(
    kind: str, db: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.worker import BreastdxWorker
    from service.worker_lanes import LaneWorker

    worker_class = BreastdxWorker if kind == "main" else LaneWorker
    worker = worker_class(["t-heartbeat"], connection=db, name=f"beat-{kind}")
    sent: list[int] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    worker.heartbeat(90)
    assert len(sent) == 1  # RQ sends its three commands one at a time
    assert db.hget(worker.key, "last_heartbeat") is not None and 80 < db.ttl(worker.key) <= 90
