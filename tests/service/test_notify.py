"""Job-final announcements: a waiting request is woken the moment its job ends, in process and
through Redis pub/sub, and never by a job that is still running."""

from __future__ import annotations

import asyncio
import threading
import uuid

import redis

from models_registry.card import Stage
from service.jobs.notify import RedisListener, Waiters
from service.jobs.state import InputInfo, JobRecord, JobState
from service.jobs.store import JobStore, MemoryKeyValue, RedisKeyValue, Ttls
from tests.service import jobs_support as js

TTLS = Ttls(result=60, failure=60, upload=60, lease=10)


def record(state: JobState) -> JobRecord:
    info = InputInfo(index=0, size_bytes=1, sha256="0" * 64)
    return JobRecord(
        id=uuid.uuid4().hex, stage=Stage.ULTRASOUND, state=state, model_ref="m@1", inputs=[info]
    )


async def woken(waiters: Waiters, job: JobRecord, save: threading.Thread, within_s: float) -> bool:
    """Watch ``job``, run ``save`` in another thread, report whether the waiter was woken."""
    with waiters.watch(job.id) as finished:
        save.start()
        try:
            await asyncio.wait_for(finished.wait(), within_s)
        except TimeoutError:
            return False
        finally:
            save.join()
    return True


def saver(store: JobStore, job: JobRecord) -> threading.Thread:
    return threading.Thread(target=store.save, args=(job,))


def test_waiters_wake_only_their_job_and_forget_it() -> None:
    async def scenario() -> tuple[bool, bool, int, int]:
        waiters = Waiters()
        with waiters.watch("a") as a, waiters.watch("b") as b:
            threading.Thread(target=waiters.wake, args=("a",)).start()
            await asyncio.wait_for(a.wait(), 2)
            await asyncio.sleep(0.05)
            watching = len(waiters)
        return a.is_set(), b.is_set(), watching, len(waiters)

    a_set, b_set, watching, left = asyncio.run(scenario())
    assert a_set and not b_set and watching == 2 and left == 0


def test_in_process_store_announces_final_states_only() -> None:
    kv, waiters = MemoryKeyValue(), Waiters()
    store = JobStore(kv, "t-notify", TTLS)
    kv.subscribe(store.final_channel, waiters.wake)
    running, done = record(JobState.RUNNING), record(JobState.SUCCEEDED)
    assert not asyncio.run(woken(waiters, running, saver(store, running), 0.3))
    assert asyncio.run(woken(waiters, done, saver(store, done), 2))
    assert len(waiters) == 0


def test_redis_listener_wakes_waiters_of_jobs_another_process_finishes(db: redis.Redis) -> None:
    waiters = Waiters()
    listener = RedisListener(db, "t-notify:job-final", waiters.wake)
    listener.start()
    try:
        assert listener.alive
        # the "worker" writes through its own connection, as another process would
        other = redis.Redis.from_url(js.TEST_REDIS_URL)
        store = JobStore(RedisKeyValue(other), "t-notify", TTLS)
        assert store.final_channel == listener.channel
        queued, failed = record(JobState.QUEUED), record(JobState.FAILED)
        assert not asyncio.run(woken(waiters, queued, saver(store, queued), 0.3))
        assert asyncio.run(woken(waiters, failed, saver(store, failed), 2))
        assert JobRecord.model_validate_json(db.get(f"t-notify:job:{failed.id}") or b"") == failed
    finally:
        listener.stop()
    assert not listener.alive
