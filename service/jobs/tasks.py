"""The RQ job function: module-level, takes the job id (never arrays), runs in ``breastdx worker``.

``run_analysis(job_id)`` runs one attempt through ``service.jobs.execute`` with the worker
process's backend (settings from the environment, the Redis job store, the registry and the
ONNX Runtime sessions the worker loaded at start). While it runs, a thread renews the job's
lease every ``lease_ttl_s / 3``; a worker killed mid-job stops renewing and the job is found
abandoned (``service.jobs.reconcile``). The lease is no longer renewed past ``job_timeout_s +
lease_ttl_s`` (a call stuck in native code), so the job is retried elsewhere.

Errors that a retry cannot fix (input errors, timeouts, bugs) set the RQ job's ``retries_left``
to 0 before they propagate, so RQ's ``Retry`` only repeats transient failures.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType
from typing import Any

from rq import get_current_job

from service.config import get_settings
from service.jobs.backend import get_backend
from service.jobs.execute import Attempt, execute, is_transient
from service.jobs.store import JobStore

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews a job's lease from a daemon thread while the attempt runs."""

    def __init__(self, store: JobStore, job_id: str, holder: str, deadline_s: float) -> None:
        self.store, self.job_id, self.holder = store, job_id, holder
        self.deadline = time.monotonic() + deadline_s
        self.interval = max(0.5, store.ttls.lease / 3)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval) and time.monotonic() < self.deadline:
            try:
                self.store.renew_lease(self.job_id, self.holder)
            except Exception:  # Redis blips: the next renewal tries again
                logger.warning("lease renewal failed", extra={"job_id": self.job_id})

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_analysis(job_id: str) -> dict[str, Any]:
    """The RQ job: one attempt at analysis job ``job_id``."""
    settings = get_settings()
    backend = get_backend(settings)
    job = get_current_job()
    worker = (job.worker_name if job is not None else None) or "rq-worker"
    retries_left = (job.retries_left or 0) if job is not None else 0
    deadline = settings.job_timeout_s + settings.lease_ttl_s
    with LeaseKeeper(backend.store, job_id, worker, deadline):
        try:
            return execute(
                job_id,
                store=backend.store,
                registry=backend.registry,
                settings=settings,
                attempt=Attempt(worker, retries_left, job.timeout if job is not None else None),
            )
        except Exception as exc:
            if job is not None and not is_transient(exc):
                job.retries_left = 0  # RQ retries transient failures only
            raise
