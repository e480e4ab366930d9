"""In-process execution (no Redis): a bounded thread pool in the API process.

At most ``inprocess_workers`` jobs run at once (``max_batch`` where micro-batching is on:
``execute.job_threads``) and ``inprocess_max_pending`` wait or run; one more is refused with
503 ``service_busy`` (Retry-After) before anything is stored. Transient failures are retried
with the same intervals as the queue's ``Retry``. An attempt running past ``job_timeout_s``
fails the job with ``job_timeout`` at once (``on_timeout``); a thread cannot be stopped, so the
attempt holds its slot until it ends and its late result is discarded. The queued mode's
workers are stopped at the limit; prefer it in production.
"""

from __future__ import annotations

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


class InProcessExecutor:
    """Runs ``run(job_id, attempt, checked)`` on a thread pool, retrying transient failures.

    ``checked``: what the job's submission check made in this process (the pinned card, the
    checked images). The images are carried for at most ``2 x slots`` jobs at once, which
    bounds the memory they hold; the attempts of the other jobs check the stored bytes again.
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
        self._carrying = 0  # jobs holding checked images
        self._lock = threading.Lock()

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
        carries = False
        if checked is not None and checked.inputs:
            with self._lock:
                carries = self._carrying < 2 * self.slots
                self._carrying += carries
            if not carries:
                checked = CheckedRequest(checked.card)  # the card alone: the images stay behind
        self._pool.submit(self._attempts, job_id, checked, carries)

    def _attempts(self, job_id: str, checked: CheckedRequest | None, carries: bool) -> None:
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
                    self._carrying -= 1
            self.release()

    def _timer(self, job_id: str, attempt: Attempt) -> threading.Timer | None:
        if self.on_timeout is None or attempt.timeout_s is None:
            return None
        timer = threading.Timer(attempt.timeout_s, self.on_timeout, args=(job_id,))
        timer.daemon = True
        timer.start()
        return timer

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
