"""Per-stage RQ queues: ``<namespace>:mammography``, ``<namespace>:ultrasound``,
``<namespace>:histopathology`` (``breastdx:...`` by default).

A job is enqueued under its own id with the settings' limits: ``job_timeout_s`` per attempt,
``result_ttl_s`` / ``failure_ttl_s`` for RQ's own result and failure records, ``upload_ttl_s``
as the longest it may wait in the queue, and ``Retry(max=retry_max,
interval=retry_intervals_s)`` (1, 5, 15 s by default; RQ's scheduler, started in every worker,
re-enqueues a retried job when its interval has passed). Only transient failures are retried:
the task sets ``retries_left = 0`` before it re-raises an input error or a timeout
(``service.jobs.tasks``).
"""

from __future__ import annotations

from collections.abc import Iterable

import redis
from rq import Queue, Retry
from rq.exceptions import InvalidJobOperation
from rq.job import Job, JobStatus
from rq.worker import SimpleWorker

from models_registry.card import Stage
from service.config import Settings
from service.errors import QueueUnavailableError
from service.jobs.state import JobRecord

TASK = "service.jobs.tasks.run_analysis"


def stage_queue_name(namespace: str, stage: Stage) -> str:
    """``<namespace>:<stage>``, e.g. ``breastdx:mammography``."""
    return f"{namespace}:{stage.value}"


def queue_name(settings: Settings, stage: Stage) -> str:
    """The RQ queue of ``stage`` under the settings' namespace."""
    return stage_queue_name(settings.namespace, stage)


def stage_queues(
    settings: Settings, connection: redis.Redis, stages: Iterable[Stage] = tuple(Stage)
) -> list[Queue]:
    return [Queue(queue_name(settings, stage), connection=connection) for stage in stages]


def retry_policy(settings: Settings) -> Retry | None:
    if settings.retry_max < 1:
        return None
    return Retry(max=settings.retry_max, interval=list(settings.retry_intervals_s) or 0)


def enqueue(settings: Settings, connection: redis.Redis, record: JobRecord) -> Job:
    """Put ``record``'s job on its stage queue; the RQ job id is the record's id."""
    queue = Queue(queue_name(settings, record.stage), connection=connection)
    try:
        with connection.pipeline() as pipe:  # RQ's writes in one round trip (it makes two)
            job = queue.enqueue(
                TASK,
                record.id,
                job_id=record.id,
                job_timeout=settings.job_timeout_s,
                result_ttl=settings.result_ttl_s,
                failure_ttl=settings.failure_ttl_s,
                ttl=settings.upload_ttl_s,
                retry=retry_policy(settings),
                description=f"analysis {record.stage.value} {record.model_ref}",
                pipeline=pipe,
            )
            pipe.execute()
        return job
    except redis.RedisError as exc:
        raise QueueUnavailableError(
            f"the job queue (Redis) cannot be reached: {type(exc).__name__}; retry later",
            retry_after=settings.redis_retry_after_s,
        ) from exc


def rq_status(connection: redis.Redis, job_id: str) -> JobStatus | None:
    """RQ's status of the job, or None when RQ no longer knows it."""
    try:
        return Job(job_id, connection=connection).get_status(refresh=True)
    except InvalidJobOperation:
        return None


def live_workers(settings: Settings, connection: redis.Redis) -> dict[Stage, int]:
    """Workers registered on each stage queue (RQ's worker registry)."""
    return {
        stage: len(SimpleWorker.all(queue=queue))
        for stage, queue in zip(Stage, stage_queues(settings, connection), strict=True)
    }
