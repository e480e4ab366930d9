"""The RQ job function: module-level, takes the job id (never arrays), runs in ``breastdx worker``.

``run_analysis(job_id)`` runs one attempt through ``service.jobs.execute`` with the worker
process's backend (settings from the environment, the Redis job store, the registry and the
ONNX Runtime sessions the worker loaded at start). While it runs, the process's lease thread
renews the job's lease every ``lease_ttl_s / 3``; a worker killed mid-job stops renewing and the
job is found abandoned (``service.jobs.reconcile``). The lease is no longer renewed past
``job_timeout_s + lease_ttl_s`` (a call stuck in native code), so the job is retried elsewhere.

Errors that a retry cannot fix (input errors, timeouts, bugs) set the RQ job's ``retries_left``
to 0 before they propagate, so RQ's ``Retry`` only repeats transient failures.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rq import get_current_job

from service.config import get_settings
from service.jobs.backend import get_backend
from service.jobs.execute import Attempt, execute, is_transient
from service.jobs.store import JobStore

logger = logging.getLogger(__name__)


class LeaseRenewer:
    """One daemon thread per process renews the lease of every job the process is running
    (a thread started and joined per job cost about as much as a small model's run)."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[JobStore, str, float]] = {}
        self._lock = threading.Lock()
        self._owner = 0  # the pid the thread runs in (a forked child starts its own)

    @contextmanager
    def holding(
        self, store: JobStore, job_id: str, holder: str, deadline_s: float
    ) -> Iterator[None]:
        """Renew ``job_id``'s lease (``holder``) while the block runs, at most ``deadline_s``."""
        with self._lock:
            self._held[job_id] = (store, holder, time.monotonic() + deadline_s)
            if self._owner != os.getpid():
                self._owner = os.getpid()
                threading.Thread(target=self._run, name="lease-renewer", daemon=True).start()
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(job_id, None)

    def _interval(self) -> float:
        with self._lock:
            leases = [store.ttls.lease for store, _, _ in self._held.values()]
        return max(0.5, min(leases, default=3) / 3)

    def _run(self) -> None:
        while True:
            time.sleep(self._interval())
            now = time.monotonic()
            with self._lock:
                due = [(job, *held) for job, held in self._held.items() if now < held[2]]
            for job_id, store, holder, _ in due:
                try:
                    store.renew_lease(job_id, holder)
                except Exception:  # Redis blips: the next renewal tries again
                    logger.warning("lease renewal failed", extra={"job_id": job_id})


LEASES = LeaseRenewer()


def run_analysis(job_id: str) -> dict[str, Any]:
    """The RQ job: one attempt at analysis job ``job_id``."""
    settings = get_settings()
    backend = get_backend(settings)
    job = get_current_job()
    worker = (job.worker_name if job is not None else None) or "rq-worker"
    retries_left = (job.retries_left or 0) if job is not None else 0
    deadline = settings.job_timeout_s + settings.lease_ttl_s
    with LEASES.holding(backend.store, job_id, worker, deadline):
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
