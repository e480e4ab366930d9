"""Abandoned jobs: a worker killed (SIGKILL, OOM, power loss) mid-job never says so.

RQ 3.0's own answer is ``StartedJobRegistry.cleanup``: during a worker's maintenance (every
``maintenance_interval_s``) each execution whose heartbeat expired is retried if it has retries
left, else moved to the ``FailedJobRegistry`` as ``AbandonedJobError``. With ``SimpleWorker``
that expiry is ``job_timeout_s + 60`` s after the job started, far too late for a client.

So each attempt also holds a lease in our store (renewed every ``lease_ttl_s / 3`` by the
worker, ``service.jobs.tasks``). A record that says ``running`` without a lease belongs to a
dead worker: :func:`reconcile` marks that execution expired in RQ's ``StartedJobRegistry`` and
runs RQ's cleanup, so RQ itself retries the job (``Retry`` intervals apply) or fails it; then
the record follows RQ: ``queued`` with ``last_error = worker_lost``, or ``failed`` with that
error and its uploads deleted. A ``queued`` record whose RQ job is gone (expired in the queue)
fails as ``job_lost`` (once a minute old: a record is stored just before it is enqueued). It
runs on ``GET /v1/analyses/{id}`` and every maintenance interval in each worker
(:func:`reconcile_running`), under a per-job lock so it acts once.
"""

from __future__ import annotations

import logging

import redis
from rq.job import JobStatus
from rq.registry import StartedJobRegistry

from models_registry.card import Stage
from service.config import Settings
from service.jobs.queue import queue_name, rq_status, stage_queue_name
from service.jobs.state import JobError, JobRecord, JobState, utcnow
from service.jobs.store import JobStore

logger = logging.getLogger(__name__)

LOCK_TTL_S = 30
LOST_GRACE_S = 60  # a queued record younger than this may still be on its way to RQ
WAITING = {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


def worker_lost(record: JobRecord, retrying: bool) -> JobError:
    then = "; it will be retried" if retrying else "; no retries left"
    return JobError(
        code="worker_lost",
        title="Worker lost",
        detail=f"the worker running attempt {record.attempts} stopped without finishing{then}",
        retryable=retrying,
    )


def _job_lost(record: JobRecord) -> JobError:
    return JobError(
        code="job_lost",
        title="Job lost",
        detail="the queue no longer holds this job (it waited longer than the upload TTL)",
    )


def _expire_execution(connection: redis.Redis, registry: StartedJobRegistry, job_id: str) -> None:
    """Give the job's executions a score in the past so that RQ's cleanup takes them."""
    for found, execution_id in registry.get_job_and_execution_ids(cleanup=False):
        if found == job_id:
            connection.zadd(registry.key, {f"{job_id}:{execution_id}": 0}, xx=True)


def _follow_rq(record: JobRecord, status: JobStatus | None, store: JobStore) -> JobRecord | None:
    """The record after RQ's verdict on a dead worker's job (None: nothing to change)."""
    if status in WAITING:
        error = worker_lost(record, retrying=True)
        return record.model_copy(update={"state": JobState.QUEUED, "last_error": error})
    if status in {JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED, None}:
        error = worker_lost(record, retrying=False)
        store.delete_inputs(record)
        update = {"state": JobState.FAILED, "error": error, "finished_at": utcnow()}
        return record.model_copy(update=update | {"last_error": error})
    return None


def _suspect(record: JobRecord, store: JobStore, connection: redis.Redis) -> bool:
    """Cheap first look: a running job without a lease, or a queued one RQ does not know."""
    if record.state.final:
        return False
    if record.state is JobState.RUNNING:
        return store.lease_holder(record.id) is None
    age_s = (utcnow() - record.created_at).total_seconds()
    return age_s > LOST_GRACE_S and rq_status(connection, record.id) is None


def _verdict(fresh: JobRecord, store: JobStore, connection: redis.Redis) -> JobRecord | None:
    """The reconciled record, or None when nothing changes."""
    status = rq_status(connection, fresh.id)
    if fresh.state is JobState.QUEUED:
        if status is not None:
            return None
        store.delete_inputs(fresh)
        update = {"state": JobState.FAILED, "error": _job_lost(fresh), "finished_at": utcnow()}
        return fresh.model_copy(update=update)
    if store.lease_holder(fresh.id) is not None:
        return None
    if status is JobStatus.STARTED:
        started = StartedJobRegistry(
            stage_queue_name(store.namespace, fresh.stage), connection=connection
        )
        _expire_execution(connection, started, fresh.id)
        started.cleanup()  # RQ retries the job (Retry intervals apply) or fails it
        status = rq_status(connection, fresh.id)
    return _follow_rq(fresh, status, store)


def reconcile(record: JobRecord, store: JobStore, connection: redis.Redis) -> JobRecord:
    """``record`` brought in line with RQ when its worker is gone; unchanged otherwise."""
    if not _suspect(record, store, connection):
        return record
    lock = f"{store.namespace}:job:{record.id}:reconcile"
    if not store.kv.set_nx(lock, b"1", LOCK_TTL_S):
        return record
    try:
        fresh = store.get(record.id)  # re-read: the attempt may have just ended
        if fresh is None or fresh.state.final:
            return fresh or record
        updated = _verdict(fresh, store, connection)
        if updated is None:
            return fresh
        store.save(updated)
        logger.warning(
            "abandoned job reconciled: now %s", updated.state.value, extra=updated.log_extra()
        )
        return updated
    finally:
        store.kv.delete(lock)


def reconcile_running(settings: Settings, store: JobStore, connection: redis.Redis) -> int:
    """Reconcile every job RQ holds as started on the stage queues; returns how many changed."""
    changed = 0
    for stage in Stage:
        registry = StartedJobRegistry(queue_name(settings, stage), connection=connection)
        for job_id in registry.get_job_ids(cleanup=False):
            record = store.get(job_id)
            if record is not None and reconcile(record, store, connection) != record:
                changed += 1
    return changed
