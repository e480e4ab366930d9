"""Where jobs go: the job store, the registry and the dispatcher for one ``Settings``.

Queued mode (``redis_url`` set): the Redis job store, jobs enqueued on the per-stage RQ queues.
In-process mode: a memory store and :class:`InProcessExecutor`, which hands each job's attempt
what its submission check made (the pinned card, the checked images). One backend per settings
object and process (the API, each worker, the DICOM listener), made on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import redis
from anyio import to_thread

from models_registry.registry import Registry
from service.config import Settings
from service.jobs import queue
from service.jobs.execute import Attempt, execute, time_out
from service.jobs.inprocess import InProcessExecutor
from service.jobs.notify import RedisListener, Waiters
from service.jobs.preflight import CheckedRequest
from service.jobs.state import JobRecord
from service.jobs.store import JobStore, MemoryKeyValue, RedisKeyValue, Ttls, redis_client

T = TypeVar("T")


def service_registry(settings: Settings) -> Registry:
    """The registry's default stores (``models_registry.settings``), ``settings.model_store``
    first where it is set."""
    return Registry.default(settings.model_store)


@dataclass
class Backend:
    """The store, the registry and how a job is dispatched, for one settings object."""

    settings: Settings
    store: JobStore
    registry: Registry
    redis: redis.Redis | None = None
    executor: InProcessExecutor | None = field(default=None, repr=False)
    waiters: Waiters = field(default_factory=Waiters, repr=False)
    listener: RedisListener | None = field(default=None, repr=False)

    async def call(self, read: Callable[[], T]) -> T:
        """Run a read of the store from async code: in a worker thread where it waits on Redis,
        at once in process (a dict look-up; a thread hop would cost more than the read)."""
        if self.redis is None:
            return read()
        return await to_thread.run_sync(read)

    def start_listening(self) -> None:
        """Queued mode: hear the job-final announcements (started on the first wait; the
        workers, which never wait, never start it). Blocks up to 1 s the first time."""
        if self.redis is not None and self.listener is None:
            self.listener = RedisListener(self.redis, self.store.final_channel, self.waiters.wake)
        if self.listener is not None:
            self.listener.start()

    @property
    def listening(self) -> bool:
        return self.redis is None or (self.listener is not None and self.listener.alive)

    @property
    def in_process(self) -> bool:
        """Jobs run in this process (no Redis): their attempts take the submission's check."""
        return self.executor is not None

    def reserve(self) -> None:
        """Refuse early when the in-process pool is full (queued mode: nothing to reserve)."""
        if self.executor is not None:
            self.executor.reserve()

    def release(self) -> None:
        if self.executor is not None:
            self.executor.release()

    def dispatch(self, record: JobRecord, checked: CheckedRequest | None = None) -> None:
        """Enqueue the stored job on its stage queue, or run it on the in-process pool with
        what its submission check made (``checked``)."""
        if self.redis is not None:
            queue.enqueue(self.settings, self.redis, record)
        elif self.executor is not None:
            self.executor.submit(record.id, checked)

    def run_attempt(self, job_id: str, attempt: Attempt, checked: CheckedRequest | None) -> object:
        return execute(
            job_id,
            store=self.store,
            registry=self.registry,
            settings=self.settings,
            attempt=attempt,
            checked=checked,
        )

    def time_out(self, job_id: str) -> bool:
        return time_out(job_id, store=self.store, timeout_s=self.settings.job_timeout_s)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        if self.executor is not None:
            self.executor.shutdown()
        if self.redis is not None:
            self.redis.close()


_BACKENDS: dict[int, tuple[Settings, Backend]] = {}
_LOCK = threading.Lock()


def _make(settings: Settings) -> Backend:
    ttls = Ttls.from_settings(settings)
    registry = service_registry(settings)
    if settings.redis_url:
        client = redis_client(settings.redis_url)
        kv = RedisKeyValue(client, settings.redis_retry_after_s)
        return Backend(settings, JobStore(kv, settings.namespace, ttls), registry, redis=client)
    memory = MemoryKeyValue()
    backend = Backend(settings, JobStore(memory, settings.namespace, ttls), registry)
    memory.subscribe(backend.store.final_channel, backend.waiters.wake)
    backend.executor = InProcessExecutor(settings, backend.run_attempt, backend.time_out)
    return backend


def get_backend(settings: Settings) -> Backend:
    """The backend of ``settings`` in this process, made on first use."""
    with _LOCK:
        entry = _BACKENDS.get(id(settings))
        if entry is None or entry[0] is not settings:
            entry = (settings, _make(settings))
            _BACKENDS[id(settings)] = entry
        return entry[1]


def close_backend(settings: Settings) -> None:
    """Stop the in-process pool and close Redis connections of ``settings``' backend."""
    with _LOCK:
        entry = _BACKENDS.pop(id(settings), None)
    if entry is not None:
        entry[1].close()
