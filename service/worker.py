"""The queue worker: RQ's ``SimpleWorker`` serving the stage queues with warm ONNX sessions.

Why ``SimpleWorker`` and not RQ's forking ``Worker``: the forking worker runs each job in a
fresh child (a "work horse"), so a session loaded in the child is lost with it, and a session
loaded in the parent before the fork is not safe to use in the child (ONNX Runtime's thread
pools do not survive ``fork``, CUDA contexts cannot be shared across it); ``SpawnWorker``
starts a new interpreter per job. ``SimpleWorker`` runs jobs in the worker process itself, so
the sessions created at start (:func:`warm_up`: each served stage's production model, one
dummy batch through it) serve every job; the runner cache (``service.inference.runner``) keeps
one session per model version. Job time limits still hold (RQ's SIGALRM death penalty in the
main thread). The price: a crash or SIGKILL takes the worker down mid-job; such a job is found
by its expired lease and retried or failed (``service.jobs.reconcile``), which every worker
checks at start and every ``maintenance_interval_s``. Scale with more worker processes (one per
GPU, or per few cores). Each worker also runs RQ's scheduler (needed for retry intervals) in a
forked child that dies with the worker (``PR_SET_PDEATHSIG``): a worker killed with SIGKILL
leaves no scheduler behind holding the scheduler lock, and a worker whose scheduler lock was
held at start (another worker's, or a dying one's) tries for it again every
``SCHEDULER_RETRY_S`` while it runs, not only at RQ's maintenance interval: a retry scheduled
while its worker died is enqueued within seconds. Liveness for ``/readyz`` is a
short-lived heartbeat key (``service.heartbeat``), which also registers the worker again with
RQ after Redis comes back empty.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence

import redis
from rq import worker_registration
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.scheduler import RQScheduler

from breastdx.errors import BreastdxError
from models_registry.card import Stage
from models_registry.errors import (
    RuntimeNotAllowedError,
    RuntimeParityError,
    RuntimeUnavailableError,
)
from models_registry.registry import Registry
from service.config import Settings
from service.heartbeat import Heartbeat
from service.inference import NoModelForStageError, pin_model
from service.inference.runner import get_runner
from service.jobs.backend import get_backend
from service.jobs.execute import runner_options
from service.jobs.hooks import load_hook_modules
from service.jobs.queue import stage_queues
from service.jobs.reconcile import reconcile_running
from service.worker_lanes import PromptPubsubStop, make_lanes

logger = logging.getLogger(__name__)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
SCHEDULER_RETRY_S = 5  # how often a worker without a running scheduler tries for the locks


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies; False where that is not
    possible (not Linux) or the parent is already gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    return os.getppid() == parent_pid  # the parent may have died before prctl


class OrphanFreeScheduler(RQScheduler):
    """RQ's scheduler, whose forked process stops (SIGTERM: releases its locks) when the worker
    that forked it dies, however it dies."""

    _parent_pid = 0

    def start(self):  # type: ignore[no-untyped-def]  # RQ's signature
        self._parent_pid = os.getpid()
        return super().start()

    def work(self) -> None:
        alive = not self._parent_pid or die_with_parent(self._parent_pid)
        if not alive and os.getppid() != self._parent_pid:
            return  # the worker is already gone: nothing to schedule for
        super().work()


class BreastdxWorker(PromptPubsubStop):
    """Jobs run in this process, on the sessions it loaded once."""

    _next_scheduler_try = 0.0
    _burst = False

    def dequeue_job_and_maintain_ttl(  # type: ignore[no-untyped-def]  # RQ's signature
        self, timeout, max_idle_time=None
    ):
        """RQ's, waking at least every ``SCHEDULER_RETRY_S`` while idle (each wake beats the
        worker's heartbeat, where :meth:`take_over_scheduling` runs)."""
        if timeout is not None:  # None: burst, which never blocks
            timeout = min(timeout, SCHEDULER_RETRY_S)
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    def heartbeat(self, *args, **kwargs):  # type: ignore[no-untyped-def]  # RQ's signature
        result = super().heartbeat(*args, **kwargs)
        self.take_over_scheduling()
        return result

    def take_over_scheduling(self) -> None:
        """Start a scheduler for the queues whose lock has come free, at most every
        ``SCHEDULER_RETRY_S``. RQ itself tries only at its maintenance interval (a minute here), so
        a worker started while a killed worker's scheduler still held the lock would leave that
        queue's scheduled retries waiting a minute. Main thread only: the scheduler is forked,
        and dies with the thread that forked it."""
        scheduler = self.scheduler
        if scheduler is None or self._burst:  # burst: scheduled jobs enqueued once, at start
            return
        if threading.current_thread() is not threading.main_thread():
            return
        process = scheduler._process
        if process is not None and process.is_alive():
            return
        now = time.monotonic()
        if now < self._next_scheduler_try:
            return
        self._next_scheduler_try = now + SCHEDULER_RETRY_S
        try:
            if scheduler.acquire_locks(auto_start=True):
                logger.info("scheduler started for %s", ", ".join(sorted(scheduler.acquired_locks)))
        except redis.RedisError:
            logger.warning("scheduler locks not taken; will retry", exc_info=True)

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
    ) -> None:
        """RQ's own, with the scheduler that dies with this worker."""
        self._burst = burst
        self.scheduler = OrphanFreeScheduler(
            self.queues,
            connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format,
            log_format=log_format,
            serializer=self.serializer,
        )
        self.scheduler.acquire_locks()
        if not self.scheduler.acquired_locks:
            return
        if not burst:
            self.scheduler.start()
            return
        try:
            self.scheduler.register_birth()
            self.scheduler.enqueue_scheduled_jobs()
        finally:
            self.scheduler.release_locks()
            self.scheduler.register_death()

    def register_again(self) -> None:
        """Register with RQ again when Redis has forgotten this worker (restarted empty)."""
        try:
            registered = self.connection.sismember(worker_registration.REDIS_WORKER_KEYS, self.key)
            if not registered:
                self.connection.delete(self.key)  # a partial hash from a heartbeat since
                self.register_birth()
        except (redis.RedisError, ValueError):
            logger.warning("registering the worker again failed; will retry", exc_info=True)


RUNTIME_ERRORS = (RuntimeUnavailableError, RuntimeNotAllowedError, RuntimeParityError)


def warm_up(settings: Settings, registry: Registry, stages: Sequence[Stage]) -> list[str]:
    """Load each stage's served model and run one zero batch through it; returns the refs.

    Raises:
        RuntimeUnavailableError, RuntimeNotAllowedError, RuntimeParityError: the runtime
            ``BREASTDX_RUNTIME`` names cannot run a served model here.
    """
    loaded = []
    for stage in stages:
        try:
            card = pin_model(stage, registry, None)
            runner = get_runner(card.ref, registry, runner_options(settings, stage))
            runner.warm()
        except NoModelForStageError:
            logger.warning("no model for stage %s; its jobs will fail", stage.value)
            continue
        except RUNTIME_ERRORS:
            raise  # BREASTDX_RUNTIME cannot be honoured: a startup error, not a silent fallback
        except BreastdxError as exc:
            logger.error("model for stage %s not loaded: %s", stage.value, exc.code)
            continue
        logger.info("warm", extra={"stage": stage.value, "model": runner.ref})
        loaded.append(runner.ref)
    return loaded


class Maintenance(threading.Thread):
    """Reconciles abandoned jobs every ``maintenance_interval_s`` (and once at start)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="breastdx-maintenance", daemon=True)
        self.settings = settings
        self.stopped = threading.Event()

    def once(self) -> None:
        backend = get_backend(self.settings)
        if backend.redis is None:
            return
        try:
            changed = reconcile_running(self.settings, backend.store, backend.redis)
        except (BreastdxError, redis.RedisError):
            logger.warning("abandoned-job check failed; will retry", exc_info=True)
            return
        if changed:
            logger.warning("%d abandoned job(s) reconciled", changed)

    def run(self) -> None:
        while not self.stopped.wait(self.settings.maintenance_interval_s):
            self.once()


def run_worker(
    settings: Settings,
    stages: Sequence[Stage] = tuple(Stage),
    *,
    burst: bool = False,
    name: str | None = None,
    log_level: str = "INFO",
) -> bool:
    """Serve the queues of ``stages`` until stopped (or, ``burst``, until they are empty)."""
    if not settings.redis_url:
        raise ValueError("a worker needs settings.redis_url (BREASTDX_REDIS_URL)")
    load_hook_modules(settings.hook_modules)
    backend = get_backend(settings)
    warm_up(settings, backend.registry, stages)
    connection = redis.Redis.from_url(settings.redis_url)
    worker = BreastdxWorker(
        stage_queues(settings, connection, stages),
        connection=connection,
        name=name,
        worker_ttl=settings.worker_ttl_s,
        maintenance_interval=settings.maintenance_interval_s,
        default_result_ttl=settings.result_ttl_s,
    )
    maintenance = Maintenance(settings)
    maintenance.once()
    maintenance.start()
    heartbeat = Heartbeat(settings, connection, worker.name, stages, worker.register_again)
    heartbeat.start()
    lanes = make_lanes(settings, stages, worker.name)  # worker_lanes - 1 more jobs at once
    lanes.start(burst)
    try:
        return worker.work(burst=burst, with_scheduler=True, logging_level=log_level)
    finally:
        lanes.stop(settings.job_timeout_s)
        heartbeat.stop()
        maintenance.stopped.set()
