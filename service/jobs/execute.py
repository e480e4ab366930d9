"""One attempt at a job, the same in an RQ worker and in the in-process thread pool.

``execute`` reads the record and the uploaded bytes, runs ``service.inference.analyse_each`` (the
code ``breastdx predict`` runs) on the pinned model (in process: on the card and the checked
images the submission handed over, ``service.jobs.preflight.CheckedRequest``), stores the
results and the two PNGs per input (the overlay of a segmentation is drawn on its first GET
from the stored display image; for a DICOM input also its SEG and SR, built while the upload is
still there: ``service.dicom.artefacts``), marks the job ``succeeded``, deletes the uploads and
runs the post-success hooks. On a failure it records why and re-raises: a transient one (Redis,
OSError, a 5xx error of the registry) sends the job back to ``queued`` while retries remain;
anything else (an input error, a timeout, a bug) fails it for good and deletes the uploads.

Order matters for the abandoned-job check (``service.jobs.reconcile``): the lease is taken before
the record says ``running``, and the record is final (or queued again) before the lease is
dropped, so "running without a lease" means the worker is gone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import redis
from rq.timeouts import JobTimeoutException

from breastdx.errors import BreastdxError
from models_registry.card import ModelCard, Stage
from models_registry.registry import Registry
from models_registry.runtime import WORK
from service.config import Settings
from service.dicom.artefacts import dicom_artefacts
from service.errors import JobNotFoundError
from service.inference import Analysis, CheckedInput, RunnerOptions, analyse_each
from service.inference.batching import BatchPolicy
from service.inference.render import mask_png, overlay_png, pack_display
from service.inference.runner import GPU_PROVIDER, default_providers
from service.inference.runtime_choice import parse_runtime
from service.jobs.hooks import run_hooks
from service.jobs.preflight import CheckedRequest
from service.jobs.state import JobError, JobRecord, JobState, utcnow
from service.jobs.store import ArtefactKind, JobStore, RedisKeyValue
from service.logs import log_context
from service.metrics import SharedMetrics, observe_inference, observe_job

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attempt:
    """Who runs this attempt, how many retries remain after it, its time limit (if any)."""

    worker: str
    retries_left: int
    timeout_s: float | None = None


def runner_options(settings: Settings, stage: Stage | str | None = None) -> RunnerOptions:
    """The session options every job and the worker's warm-up use (one cached session);
    ``stage``: whose runtime (``BREASTDX_STAGE_RUNTIMES``, else ``BREASTDX_RUNTIME``)."""
    return RunnerOptions(
        intra_op_threads=settings.ort_threads,
        allow_spinning=settings.ort_spinning,
        runtime=parse_runtime(settings.runtime_for(stage)),
        concurrent=concurrent_runs(settings),
    )


def concurrent_runs(settings: Settings) -> int:
    """Model runs this process may make at once: its in-process job threads, or a queue
    worker's lanes."""
    return settings.worker_lanes if settings.queued else job_threads(settings)


def batch_policy(settings: Settings) -> BatchPolicy:
    """Micro-batching across the jobs that run at once in this process. A queue worker with
    one lane runs one job at a time, so there the window is off unless set: it would only add
    its wait."""
    window = settings.batch_window_ms
    if window is None and settings.queued and settings.worker_lanes == 1:
        window = 0.0
    return BatchPolicy(window, settings.max_batch)


def job_threads(settings: Settings) -> int:
    """In-process jobs that run at once: ``inprocess_workers``, raised to ``max_batch`` where
    batching is on (a merged run holds only the runs of jobs that run at the same time)."""
    window = settings.batch_window_ms
    batching = window > 0 if window is not None else GPU_PROVIDER in default_providers()
    return max(settings.inprocess_workers, settings.max_batch if batching else 1)


def is_transient(exc: BaseException) -> bool:
    """Worth another attempt: the store, the file system or the registry may recover."""
    if isinstance(exc, BreastdxError):
        return exc.http_status >= 500
    return isinstance(exc, redis.RedisError | OSError)


def job_error(exc: BaseException, timeout_s: float | None = None) -> JobError:
    """What the record says about a failed attempt; no paths, names or identifiers."""
    transient = is_transient(exc)
    if isinstance(exc, JobTimeoutException):
        detail = f"the analysis took longer than the {timeout_s or '?'} s limit"
        return JobError(code="job_timeout", title="Analysis timed out", detail=detail)
    if isinstance(exc, BreastdxError):
        return JobError.from_error(exc, retryable=transient)
    if transient:
        detail = f"a transient {type(exc).__name__} interrupted the analysis"
        return JobError(
            code="transient_error", title="Transient failure", detail=detail, retryable=True
        )
    detail = f"an unexpected {type(exc).__name__} stopped the analysis"
    return JobError(code="internal_error", title="Internal error", detail=detail)


def execute(
    job_id: str,
    *,
    store: JobStore,
    registry: Registry,
    settings: Settings,
    attempt: Attempt,
    checked: CheckedRequest | None = None,
) -> dict[str, Any]:
    """Run one attempt; returns a small summary (ids and counts, never arrays).

    ``checked``: what the submission check made in this process (in process): the pinned card
    is not resolved again and the checked images are not decoded again; else (a queue worker)
    the record's ``name@version`` is resolved and the stored bytes are checked.
    """
    record = store.get(job_id)
    if record is None:
        raise JobNotFoundError(f"job {job_id} expired before it ran", job_id=job_id)
    # WORK: the whole attempt (results, PNGs, DICOM objects) counts as this thread's work
    with log_context(job_id=job_id, model=record.model_ref), WORK.held():
        return _attempt(record, store, registry, settings, attempt, checked)


def _attempt(
    record: JobRecord,
    store: JobStore,
    registry: Registry,
    settings: Settings,
    attempt: Attempt,
    checked: CheckedRequest | None = None,
) -> dict[str, Any]:
    if record.state.final:
        logger.warning(
            "job already %s; not run again", record.state.value, extra=record.log_extra()
        )
        return {"job_id": record.id, "state": record.state.value}
    record = record.model_copy(
        update={
            "state": JobState.RUNNING,
            "attempts": record.attempts + 1,
            "started_at": utcnow(),
            "worker": attempt.worker,
        }
    )
    store.start(record, attempt.worker)  # the lease and the running record, one write
    logger.info("job started (attempt %d)", record.attempts, extra=record.log_extra())
    current = False
    try:
        inputs = store.inputs(record)
        analyses = _analyse(record, inputs, checked, registry, settings)
        current = _succeed(record, analyses, store, dicom_artefacts(inputs, analyses, registry))
    except Exception as exc:
        _fail(record, exc, attempt, store)
        raise
    finally:
        if not current:  # a success dropped the lease with its record
            store.drop_lease(record.id)
    if current and record.after:
        hooks = run_hooks(record, analyses, partial(_stored, store, record.id))
        latest = store.get(record.id)
        if latest is not None:
            store.save(latest.model_copy(update={"hooks": hooks}))
    return {"job_id": record.id, "state": JobState.SUCCEEDED.value, "results": len(analyses)}


def _stored(store: JobStore, job_id: str, kind: str, index: int) -> bytes | None:
    return store.artefact(job_id, cast(ArtefactKind, kind), index)


def _elapsed_s(record: JobRecord) -> float:
    return (utcnow() - record.created_at).total_seconds()


def _analyse(
    record: JobRecord,
    inputs: Sequence[bytes],
    checked: CheckedRequest | None,
    registry: Registry,
    settings: Settings,
) -> list[Analysis]:
    sources: Sequence[bytes | CheckedInput] = inputs
    model: str | ModelCard = record.model_ref
    if checked is not None and checked.card.ref == record.model_ref:
        model = checked.card
        if len(checked.inputs) == len(inputs):
            sources = checked.inputs
    outcomes = analyse_each(
        record.stage,
        sources,
        registry=registry,
        model_ref=model,
        options=runner_options(settings, record.stage),
        max_pixels=settings.max_pixels,
        batching=batch_policy(settings),
    )
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, BreastdxError):  # the first refused input fails the job
            outcome.context["input_index"] = index
            raise outcome
    return [o for o in outcomes if isinstance(o, Analysis)]


def _current(record: JobRecord, store: JobStore) -> bool:
    """False when another attempt took the job over (this one was presumed lost)."""
    latest = store.get(record.id)
    if latest is None or latest.attempts != record.attempts or latest.state.final:
        logger.warning("stale attempt %d; not recorded", record.attempts, extra=record.log_extra())
        return False
    return True


def _shared_metrics(store: JobStore) -> SharedMetrics | None:
    """Queued mode: durations go to Redis, where every API process's /metrics reads them."""
    if isinstance(store.kv, RedisKeyValue):
        return SharedMetrics(store.kv.client, store.namespace)
    return None


def _images(analysis: Analysis) -> dict[ArtefactKind, bytes]:
    """The mask PNG, and the overlay PNG or (where the Analysis has it) the display image it
    is drawn from on the first GET: drawing and encoding an RGB overlay costs more than the rest
    of a small model's post-processing, and most API clients never fetch it."""
    images: dict[ArtefactKind, bytes] = {"mask": mask_png(analysis)}
    if analysis.display is not None:
        images["display"] = pack_display(analysis.display)
    else:
        images["overlay"] = overlay_png(analysis)
    return images


def _succeed(
    record: JobRecord,
    analyses: list[Analysis],
    store: JobStore,
    dicom: list[dict[ArtefactKind, bytes]],
) -> bool:
    results = [a.result.model_dump_json() for a in analyses]
    images = [_images(a) for a in analyses]
    record = record.model_copy(
        update={
            "state": JobState.SUCCEEDED,
            "finished_at": utcnow(),
            "done": len(analyses),
            "error": None,
        }
    )
    if not _current(record, store):
        return False
    # results, artefacts, the final record, the uploads and the lease: one write, so a reader
    # that sees the job succeeded finds its results
    store.finish(record, results, images, dicom)
    shared = _shared_metrics(store)
    with shared.batch() if shared is not None else nullcontext() as metrics:
        observe_job(record.stage, _elapsed_s(record), JobState.SUCCEEDED.value, metrics)
        if analyses:  # one batch run per request: its time is shared by the request's images
            first = analyses[0].result
            seconds = first.timings_ms.inference / 1000.0
            observe_inference(record.stage, first.model.ref, seconds, metrics)
    logger.info("job succeeded", extra=record.log_extra())
    return True


def time_out(job_id: str, *, store: JobStore, timeout_s: float) -> bool:
    """Fail a job still running past its limit (in process, where a thread cannot be stopped:
    the attempt runs on, and ``_current`` keeps its late result out of the record)."""
    record = store.get(job_id)
    if record is None or record.state is not JobState.RUNNING:
        return False
    attempt = Attempt(record.worker or "in-process", retries_left=0, timeout_s=timeout_s)
    _fail(record, JobTimeoutException(), attempt, store)
    return True


def _fail(record: JobRecord, exc: Exception, attempt: Attempt, store: JobStore) -> None:
    error = job_error(exc, attempt.timeout_s)
    retry = error.retryable and attempt.retries_left > 0
    if retry:
        update: dict[str, Any] = {"state": JobState.QUEUED, "last_error": error}
    else:
        update = {
            "state": JobState.FAILED,
            "error": error,
            "last_error": error,
            "finished_at": utcnow(),
        }
    record = record.model_copy(update=update)
    try:
        if not _current(record, store):
            return
        store.save(record)
        if not retry:
            store.delete_inputs(record)
            observe_job(
                record.stage, _elapsed_s(record), JobState.FAILED.value, _shared_metrics(store)
            )
    except BreastdxError:  # the store itself is down: RQ's retry or the reconciler catches up
        logger.exception("could not record the failure", extra=record.log_extra())
        return
    logger.warning(
        "job attempt %d failed: %s%s",
        record.attempts,
        error.code,
        "; retrying" if retry else "",
        extra=record.log_extra(),
    )
