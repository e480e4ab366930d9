"""In-process execution (no Redis): a bounded thread pool in the API process.

At most ``inprocess_workers`` jobs run at once (``max_batch`` where micro-batching is on:
``execute.job_threads``) and ``inprocess_max_pending`` wait or run; one more is refused with
503 ``service_busy`` (Retry-After) before anything is stored. Transient failures are retried
with the same intervals as the queue's ``Retry``. An attempt running past ``job_timeout_s``
fails the job with ``job_timeout`` at once (``on_timeout``); a thread cannot be stopped, so the
attempt holds its slot until it ends and its late result is discarded. The queued mode's
workers are stopped at the limit; prefer it in production. One watchdog thread keeps every
attempt's deadline (:class:`Deadlines`): a thread started per attempt cost about a tenth of the
API process's CPU time at 16 concurrent requests.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from service.config import Settings
from service.errors import ServiceBusyError
from service.jobs.execute import Attempt, is_transient, job_threads
from service.jobs.preflight import CheckedRequest

logger = logging.getLogger(__name__)

WORKER_NAME = "in-process"
RunAttempt = Callable[[str, Attempt, CheckedRequest | None], object]
OnTimeout = Callable[[str], object]


class Deadline:
    """One pending call of :class:`Deadlines`; ``cancel`` stops it if it has not run yet."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Deadlines:
    """Calls ``fn(*args)`` when its deadline passes, unless cancelled first: one daemon thread
    and a heap for all of them (``threading.Timer`` starts a thread per call)."""

    def __init__(self, name: str = "breastdx-deadlines") -> None:
        self._name = name
        self._heap: list[tuple[float, int, Deadline, Callable[..., object], tuple[object, ...]]]
        self._heap = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def __len__(self) -> int:
        with self._cond:
            return sum(not entry[2].cancelled for entry in self._heap)

    def call_later(self, seconds: float, fn: Callable[..., object], *args: object) -> Deadline:
        handle = Deadline()
        with self._cond:
            if self._stopped:
                handle.cancel()
                return handle
            if len(self._heap) > 64 and 2 * len(self) < len(self._heap):
                self._heap = [e for e in self._heap if not e[2].cancelled]  # drop cancelled ones
                heapq.heapify(self._heap)
            entry = (time.monotonic() + seconds, next(self._order), handle, fn, args)
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            elif self._heap[0] is entry:
                self._cond.notify()  # the watchdog sleeps until a later deadline: wake it
        return handle

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][2].cancelled):
                    if self._heap:
                        heapq.heappop(self._heap)  # a cancelled entry at the top
                    else:
                        self._cond.wait()
                if self._stopped:
                    return
                due, _, handle, fn, args = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
            if not handle.cancelled:
                try:
                    fn(*args)
                except Exception:
                    logger.exception("a deadline's call failed")

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()


class InProcessExecutor:
    """Runs ``run(job_id, attempt, checked)`` on a thread pool, retrying transient failures.

    ``checked``: what the job's submission check made in this process (the pinned card, the
    checked images). Pending jobs carry their images while all carried images together stay
    within ``inprocess_carry_mb`` (decoded pixels and display images), which bounds the memory
    they hold; the attempts of the other jobs check the stored bytes again.
    """

    def __init__(
        self, settings: Settings, run: RunAttempt, on_timeout: OnTimeout | None = None
    ) -> None:
        self.settings = settings
        self.run = run
        self.on_timeout = on_timeout
        self._threads = job_threads(settings)
        self._pool = ThreadPoolExecutor(
            max_workers=self._threads, thread_name_prefix="breastdx-job"
        )
        self._slots = threading.BoundedSemaphore(settings.inprocess_max_pending)
        self._carrying = 0  # bytes of the checked images jobs hold
        self._carry_limit = settings.inprocess_carry_mb << 20
        self._lock = threading.Lock()
        self._deadlines = Deadlines()

    @property
    def slots(self) -> int:
        """Jobs that run at once."""
        return self._threads

    def reserve(self) -> None:
        """Take a slot for one job, or raise :class:`ServiceBusyError`."""
        if not self._slots.acquire(blocking=False):
            raise ServiceBusyError(
                f"{self.settings.inprocess_max_pending} analyses are pending; retry later",
                retry_after=self.settings.redis_retry_after_s,
            )

    def release(self) -> None:
        self._slots.release()

    def submit(self, job_id: str, checked: CheckedRequest | None = None) -> None:
        """Run a reserved job on the pool, its attempts given ``checked``."""
        carries = 0
        if checked is not None and checked.inputs:
            size = sum(one.decoded.raw.nbytes + one.display.nbytes for one in checked.inputs)
            with self._lock:
                if self._carrying + size <= self._carry_limit:
                    carries = size
                    self._carrying += size
            if not carries:
                checked = CheckedRequest(checked.card)  # the card alone: the images stay behind
        self._pool.submit(self._attempts, job_id, checked, carries)

    def _attempts(self, job_id: str, checked: CheckedRequest | None, carries: int) -> None:
        intervals = self.settings.retry_intervals_s or [0]
        try:
            for number in range(self.settings.retry_max + 1):
                retries_left = self.settings.retry_max - number
                attempt = Attempt(WORKER_NAME, retries_left, float(self.settings.job_timeout_s))
                timer = self._timer(job_id, attempt)
                try:
                    self.run(job_id, attempt, checked)
                    return
                except Exception as exc:
                    if not (is_transient(exc) and retries_left > 0):
                        return  # execute() recorded why; nothing more to do here
                finally:
                    if timer is not None:
                        timer.cancel()
                time.sleep(intervals[min(number, len(intervals) - 1)])  # then try again
        finally:
            if carries:
                with self._lock:
                    self._carrying -= carries
            self.release()

    def _timer(self, job_id: str, attempt: Attempt) -> Deadline | None:
        if self.on_timeout is None or attempt.timeout_s is None:
            return None
        return self._deadlines.call_later(attempt.timeout_s, self.on_timeout, job_id)

    def shutdown(self) -> None:
        self._deadlines.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
