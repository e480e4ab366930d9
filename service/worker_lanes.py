"""Lanes: several jobs at once in one queue worker process, on its ONNX Runtime sessions.

``breastdx worker`` runs one job at a time (``BreastdxWorker`` in the main thread). With
``BREASTDX_WORKER_LANES=N`` it also runs ``N - 1`` lane workers in threads of the same process:
each an RQ worker of its own (its own name and Redis connection) serving the same queues on the
process's sessions, so that micro-batching (``service.inference.batching``) can merge the model
runs of jobs that run at the same time, as a GPU wants.

A lane installs no signal handlers (only the main thread may): the main worker's SIGTERM stops
the lanes (``Lanes.stop``), each after its current job. Its job time limit is RQ's
``TimerDeathPenalty``, an exception raised in the lane's thread, which like the main thread's
SIGALRM cannot stop a call stuck in native code; the job's lease then runs out and the job is
retried elsewhere (``service.jobs.reconcile``). A lane looks for work every
``LANE_DEQUEUE_TIMEOUT_S``, so a stop request reaches an idle lane within that time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from rq.job import Job
from rq.queue import Queue
from rq.timeouts import TimerDeathPenalty
from rq.worker import SimpleWorker

from models_registry.card import Stage
from service.config import Settings
from service.jobs.queue import stage_queues

logger = logging.getLogger(__name__)

LANE_DEQUEUE_TIMEOUT_S = 2
PUBSUB_STOP_S = 2.0  # the longest a stopping worker waits for its pubsub thread


class PromptPubsubStop(SimpleWorker):
    """RQ's worker, whose pubsub thread stops within ``PUBSUB_STOP_S`` on shutdown and whose
    heartbeat is one Redis round trip.

    RQ's ``unsubscribe`` sends UNSUBSCRIBE, then stops the pubsub thread, which (redis-py 8)
    waits without limit for that thread to leave its ``get_message(timeout=60)``. When the
    thread reads UNSUBSCRIBE's reply before the stop flag is set (a thread switch at the wrong
    moment) it goes back to waiting for a message that never comes, and the worker takes a
    minute to stop: the "about 60 s to stop on SIGTERM" seen now and then. Here the flag is set
    first, so the reply ends the thread's wait, and the wait for it is bounded."""

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's heartbeat (three commands: the worker's last beat and two expiries), sent in one
        round trip where RQ sends them one at a time (several times a job)."""
        if pipeline is not None:
            super().heartbeat(timeout, pipeline=pipeline)
            return
        with self.connection.pipeline(transaction=False) as pipe:
            super().heartbeat(timeout, pipeline=pipe)
            pipe.execute()

    def unsubscribe(self) -> None:
        thread = self.pubsub_thread
        if not thread:
            return
        try:
            thread.stop(timeout=0)  # only clears its running flag: no wait yet
        except TypeError:  # redis-py before 8: stop() takes no timeout and never waits
            thread.stop()
        try:
            self.pubsub.unsubscribe()  # the reply wakes the thread, which now sees the flag
        except redis.RedisError:
            logger.debug("pubsub unsubscribe failed at shutdown", exc_info=True)
        thread.join(timeout=PUBSUB_STOP_S)
        self.pubsub.close()


class LaneWorker(PromptPubsubStop):
    """A worker for a thread other than the main one (see the module docstring); no scheduler
    (the main worker runs it)."""

    death_penalty_class = TimerDeathPenalty

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        """RQ's, in turns of ``LANE_DEQUEUE_TIMEOUT_S`` until a job comes or a stop is asked
        for (RQ's own loop waits for a job without looking at the stop flag); ``timeout`` None
        (burst): RQ's, once."""
        if timeout is None:
            return super().dequeue_job_and_maintain_ttl(None, max_idle_time)
        while not self._stop_requested:
            turn = LANE_DEQUEUE_TIMEOUT_S
            found = super().dequeue_job_and_maintain_ttl(turn, turn)
            if found is not None:
                return found
        return None

    def _install_signal_handlers(self) -> None:
        """Signals reach the main thread's worker, which stops the lanes."""

    def execute_job(self, job: Job, queue: Queue) -> None:
        logger.debug("lane %s runs job %s", self.name, job.id)
        super().execute_job(job, queue)


class Lanes:
    """``count`` lane workers, each made by ``make(index)`` and run in a daemon thread."""

    def __init__(self, count: int, make: Callable[[int], LaneWorker]) -> None:
        self.workers = [make(index) for index in range(count)]
        self._burst = False
        self._threads = [
            threading.Thread(target=self._work, args=(worker,), name=f"lane-{i}", daemon=True)
            for i, worker in enumerate(self.workers)
        ]

    def _work(self, worker: LaneWorker) -> None:
        try:
            worker.work(burst=self._burst, with_scheduler=False)
        except Exception:  # a lane that dies leaves the others and the main worker serving
            logger.exception("lane %s stopped by an error", worker.name)

    def start(self, burst: bool = False) -> None:
        """Start the lanes (``burst``: each stops when the queues are empty)."""
        self._burst = burst
        for thread in self._threads:
            thread.start()
        if self.workers:
            logger.info("%d lane(s) started", len(self.workers))

    def stop(self, timeout_s: float) -> bool:
        """Ask every lane to stop after its current job; True when all did within
        ``timeout_s`` (plus one dequeue timeout)."""
        for worker in self.workers:
            worker._stop_requested = True  # RQ's own flag, read between jobs
        deadline = time.monotonic() + timeout_s + LANE_DEQUEUE_TIMEOUT_S
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            logger.warning("lanes still running at shutdown: %s", ", ".join(alive))
        return not alive

    @property
    def alive(self) -> int:
        return sum(thread.is_alive() for thread in self._threads)


def make_lanes(settings: Settings, stages: Sequence[Stage], main_name: str) -> Lanes:
    """The ``worker_lanes - 1`` lanes beside the main worker ``main_name``."""

    def make(index: int) -> LaneWorker:
        connection = redis.Redis.from_url(settings.redis_url or "")
        return LaneWorker(
            stage_queues(settings, connection, stages),
            connection=connection,
            name=f"{main_name}-lane{index + 1}",
            worker_ttl=settings.worker_ttl_s,
            default_result_ttl=settings.result_ttl_s,
        )

    return Lanes(settings.worker_lanes - 1, make)
