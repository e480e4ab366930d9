"""Worker lifecycle (issue 15, finding 6), with real ``breastdx worker`` processes on Redis: a
worker killed with SIGKILL leaves no RQ scheduler behind and leaves readiness within its
heartbeat TTL; a worker registers again after Redis comes back empty."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.worker import SimpleWorker

from service.config import Settings
from service.readiness import readiness_report
from tests import hostile
from tests.service import jobs_support as js

pytestmark = pytest.mark.integration
NS = "t-lifecycle"
REDIS_URL = hostile.REDIS_URL
TTL_S = 4


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return js.build_store(tmp_path_factory.mktemp("lifecycle"))


@pytest.fixture
def db() -> Iterator[redis.Redis]:
    client = js.redis_or_skip(hostile.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


def _settings(store: Path) -> Settings:
    return Settings(
        model_store=store, redis_url=REDIS_URL, namespace=NS, worker_heartbeat_ttl_s=TTL_S
    )


def _start(store: Path) -> subprocess.Popen[bytes]:
    env = js.worker_env(
        store, NS, BREASTDX_REDIS_URL=REDIS_URL, BREASTDX_WORKER_HEARTBEAT_TTL_S=str(TTL_S)
    )
    return js.start_worker(env)  # every stage: readiness wants a worker for each


def _workers_ok(settings: Settings) -> bool:
    checks = {c.name: c for c in readiness_report(settings).checks}
    return "workers" in checks and checks["workers"].ok


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_killed_worker_takes_its_scheduler_and_leaves_readiness(
    store: Path, db: redis.Redis
) -> None:
    settings = _settings(store)
    worker = _start(store)
    scheduler: list[int] = []
    try:
        js.wait_until(lambda: _workers_ok(settings), timeout_s=120, every_s=0.5)
        scheduler = js.wait_until(lambda: _children(worker.pid), timeout_s=60, every_s=0.2)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        js.wait_until(lambda: not any(_alive(pid) for pid in scheduler), timeout_s=15)
        js.wait_until(lambda: not _workers_ok(settings), timeout_s=TTL_S + 6, every_s=0.2)
    finally:
        js.stop_worker(worker)
        for pid in scheduler:  # today's code leaves it running under init
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_worker_registers_again_after_redis_comes_back_empty(store: Path, db: redis.Redis) -> None:
    settings = _settings(store)
    worker = _start(store)
    try:
        js.wait_until(lambda: _workers_ok(settings), timeout_s=120, every_s=0.5)
        db.flushdb()  # what a Redis restarted without persistence looks like
        # generous: a starved heartbeat thread is late, not wrong (it beats every TTL / 3)
        js.wait_until(lambda: _workers_ok(settings), timeout_s=TTL_S + 60, every_s=0.2)
        queue = Queue(f"{NS}:mammography", connection=db)
        js.wait_until(lambda: SimpleWorker.all(queue=queue), timeout_s=10)
    finally:
        js.stop_worker(worker)
