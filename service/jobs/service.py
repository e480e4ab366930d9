"""Submit and look up analysis jobs: the one entry the API and the DICOM listener share.

    record = submit_analysis(Stage.ULTRASOUND, [png_bytes], settings=settings)
    record = get_job(record.id, settings=settings)

Submission checks before it stores anything (``service.jobs.preflight``): the number of images,
the hooks, the model (pinned to ``name@version``) and every image (decoded, stage rules); the
stage arrives parsed (``service.inference.parse_stage``, at the route). In process the job
carries the pinned card and the checked images to its attempt. An ``idempotency_key`` returns
the job an earlier submission with the same key made, scoped per API key (or per origin without
one); the same key with other images is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from anyio import to_thread

from imaging.record import ImageFormat
from models_registry.card import Stage
from service.config import Settings
from service.errors import (
    ArtefactNotFoundError,
    DicomOutputUnavailableError,
    IdempotencyKeyReusedError,
    InvalidIdempotencyKeyError,
    JobNotFinishedError,
    JobNotFoundError,
    NoInputError,
    ServiceError,
    TooManyInputsError,
)
from service.inference import pin_model
from service.inference.render import overlay_from_stored
from service.inference.result import AnalysisResult
from service.jobs.backend import Backend, get_backend
from service.jobs.hooks import check_hooks, load_hook_modules
from service.jobs.notify import FALLBACK_POLL_S
from service.jobs.preflight import CheckedRequest, check_inputs
from service.jobs.reconcile import reconcile
from service.jobs.state import InputInfo, JobRecord, JobState, Origin
from service.jobs.store import DicomKind, ImageKind, JobStore

logger = logging.getLogger(__name__)

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # visible ASCII, as headers carry it
RACE_WAIT_S = 2.0


def _fingerprint(stage: Stage, model_ref: str | None, digests: Sequence[str]) -> str:
    text = "\n".join([stage.value, model_ref or "", *digests])
    return hashlib.sha256(text.encode()).hexdigest()


def _check_request(
    stage: Stage, inputs: Sequence[bytes], settings: Settings, after: Sequence[str]
) -> None:
    if not inputs:
        raise NoInputError("send at least one image as a multipart 'file' part")
    if len(inputs) > settings.max_files:
        raise TooManyInputsError(
            f"{len(inputs)} images in one request; at most {settings.max_files} are accepted",
            max_files=settings.max_files,
        )
    load_hook_modules(settings.hook_modules)
    check_hooks(after)


def submit_analysis(
    stage: Stage,
    inputs: Sequence[bytes],
    *,
    settings: Settings,
    filenames: Sequence[str | None] | None = None,
    model_ref: str | None = None,
    idempotency_key: str | None = None,
    origin: str | Origin = Origin.API,
    after: Sequence[str] = (),
    api_key_id: str | None = None,
) -> JobRecord:
    """Check, store and dispatch one analysis job; returns its record (``queued``).

    Raises:
        NoInputError, TooManyInputsError, UnknownHookError: the request.
        RegistryError, ModelStageMismatchError, NoModelForStageError: the model.
        ImagingError, WrongStageError: an image (``input_index`` in the context).
        IdempotencyKeyReusedError, InvalidIdempotencyKeyError: the ``Idempotency-Key``.
        QueueUnavailableError, ServiceBusyError: try again later (503).
    """
    origin = Origin(origin)
    _check_request(stage, inputs, settings, after)
    backend = get_backend(settings)
    digests = [hashlib.sha256(data).hexdigest() for data in inputs]
    key = _Idempotency.of(idempotency_key, api_key_id or origin.value, stage, model_ref, digests)
    if key is not None and (earlier := key.earlier(backend)) is not None:
        return earlier  # a repeat: no decoding, no new job
    card = pin_model(stage, backend.registry, model_ref)
    checked = check_inputs(stage, card, inputs, settings.max_pixels, keep=backend.in_process)
    record = JobRecord(
        id=uuid.uuid4().hex,
        stage=stage,
        model_ref=card.ref,
        origin=origin,
        api_key_id=api_key_id,
        inputs=[
            InputInfo(index=i, size_bytes=len(data), sha256=digest, filename=name)
            for i, (data, digest, name) in enumerate(
                zip(inputs, digests, filenames or [None] * len(inputs), strict=True)
            )
        ],
        after=list(after),
    )
    if key is not None and (earlier := key.claim(backend, record.id)) is not None:
        return earlier  # a concurrent twin won the claim
    _store_and_dispatch(backend, record, inputs, key, checked)
    logger.info("job submitted", extra=record.log_extra() | {"origin": origin.value})
    return record


@dataclass(frozen=True)
class _Idempotency:
    """An ``Idempotency-Key`` in its scope, with the fingerprint of the request it names."""

    scope: str
    key_hash: str
    fingerprint: str

    @classmethod
    def of(
        cls,
        key: str | None,
        scope: str,
        stage: Stage,
        model_ref: str | None,
        digests: Sequence[str],
    ) -> _Idempotency | None:
        if key is None:
            return None
        if not _IDEMPOTENCY_KEY.match(key):
            raise InvalidIdempotencyKeyError(
                "Idempotency-Key must be 1-255 visible ASCII characters"
            )
        key_hash = hashlib.sha256(key.encode()).hexdigest()
        return cls(scope, key_hash, _fingerprint(stage, model_ref, digests))

    def earlier(self, backend: Backend) -> JobRecord | None:
        """The job an earlier request with this key made, if it still exists."""
        claim = backend.store.idempotent_job(self.scope, self.key_hash)
        return None if claim is None else self._job(backend, claim)

    def claim(self, backend: Backend, job_id: str) -> JobRecord | None:
        """Claim the key for ``job_id``; returns the twin's job when another request won."""
        value = f"{job_id} {self.fingerprint}"
        claim = backend.store.claim_idempotency(self.scope, self.key_hash, value)
        if claim is None:
            return None
        earlier = self._job(backend, claim)
        if earlier is None:  # the twin's job expired: take the key over
            backend.store.release_idempotency(self.scope, self.key_hash)
            backend.store.claim_idempotency(self.scope, self.key_hash, value)
        return earlier

    def release(self, backend: Backend) -> None:
        backend.store.release_idempotency(self.scope, self.key_hash)

    def _job(self, backend: Backend, claim: str) -> JobRecord | None:
        job_id, _, fingerprint = claim.partition(" ")
        if fingerprint != self.fingerprint:
            raise IdempotencyKeyReusedError(
                "this Idempotency-Key was used with another request; use a new key per request"
            )
        deadline = time.monotonic() + RACE_WAIT_S  # the first request may still be storing
        while (record := backend.store.get(job_id)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if record is not None:
            logger.info("idempotent repeat", extra=record.log_extra())
        return record


def _store_and_dispatch(
    backend: Backend,
    record: JobRecord,
    inputs: Sequence[bytes],
    key: _Idempotency | None,
    checked: CheckedRequest,
) -> None:
    backend.reserve()
    dispatched = False
    try:
        backend.store.create(record, inputs)
        backend.dispatch(record, checked)
        dispatched = True
    finally:
        if not dispatched:  # leave nothing behind: no record, no uploads, no claim
            backend.release()
            try:
                backend.store.discard(record)
                if key is not None:
                    key.release(backend)
            except Exception:
                logger.warning("could not clean up a job that was not dispatched", exc_info=True)


def get_job(
    job_id: str, *, settings: Settings, api_key_id: str | None = None, enforce_owner: bool = False
) -> JobRecord:
    """The job's record, reconciled with the queue when its worker is gone.

    Args:
        job_id: the id ``submit_analysis`` returned.
        settings: the service settings.
        api_key_id: the caller's key id (None: anonymous).
        enforce_owner: show the job only to the key that submitted it (anonymous callers see
            jobs submitted without a key); another key's job reads as unknown.

    Raises:
        JobNotFoundError: no such job (or it expired, or it is not the caller's).
    """
    backend = get_backend(settings)
    record = backend.store.get(job_id) if _JOB_ID.match(job_id) else None
    return _visible(record, job_id, backend, api_key_id, enforce_owner)


def read_job(
    job_id: str, *, settings: Settings, api_key_id: str | None = None, enforce_owner: bool = False
) -> tuple[JobRecord, list[dict[str, Any]] | None]:
    """:func:`get_job`'s record and, for a succeeded job, :func:`job_results`' results, read
    together (one Redis round trip)."""
    backend = get_backend(settings)
    record, results = (None, None)
    if _JOB_ID.match(job_id):
        record, results = backend.store.get_with_results(job_id)
    record = _visible(record, job_id, backend, api_key_id, enforce_owner)
    if results is None or record.state is not JobState.SUCCEEDED:
        return record, None
    return record, json.loads(results)


def _visible(
    record: JobRecord | None,
    job_id: str,
    backend: Backend,
    api_key_id: str | None,
    enforce_owner: bool,
) -> JobRecord:
    """The record as the caller may see it, reconciled with the queue; else 404."""
    if record is not None and enforce_owner and record.api_key_id != api_key_id:
        record = None
    if record is None:
        raise JobNotFoundError(f"no analysis job {job_id[:64]!r} (unknown or expired)")
    if backend.redis is not None and not record.state.final:
        record = reconcile(record, backend.store, backend.redis)
    return record


def job_results(record: JobRecord, *, settings: Settings) -> list[dict[str, Any]] | None:
    """The ``AnalysisResult`` JSON objects of a succeeded job (None before, or expired)."""
    if record.state is not JobState.SUCCEEDED:
        return None
    return get_backend(settings).store.results(record.id)


def _succeeded_input(
    job_id: str, index: int, what: str, settings: Settings, api_key_id: str | None, owner: bool
) -> JobRecord:
    """The record of a succeeded job that has input ``index``; else 404 or 409."""
    record = get_job(job_id, settings=settings, api_key_id=api_key_id, enforce_owner=owner)
    if record.state is not JobState.SUCCEEDED:
        raise JobNotFinishedError(
            f"job {job_id} is {record.state.value}; {what} exist once it has succeeded",
            state=record.state.value,
        )
    if not 0 <= index < record.total:
        raise ArtefactNotFoundError(
            f"index {index} is out of range: the job has {record.total} input(s), 0-based",
            inputs=record.total,
        )
    return record


def job_artefact(
    job_id: str,
    kind: ImageKind,
    index: int,
    *,
    settings: Settings,
    api_key_id: str | None = None,
    enforce_owner: bool = False,
) -> bytes:
    """The mask or overlay PNG of input ``index`` of a succeeded job (owner as in get_job)."""
    _succeeded_input(job_id, index, "images", settings, api_key_id, enforce_owner)
    store = get_backend(settings).store
    data = store.artefact(job_id, kind, index)
    if data is None and kind == "overlay":
        data = _draw_overlay(store, job_id, index)
    if data is None:
        raise ArtefactNotFoundError(f"the {kind} of input {index} has expired")
    return data


def _draw_overlay(store: JobStore, job_id: str, index: int) -> bytes | None:
    """An overlay (segmentation or heatmap), drawn from its stored display image on the first
    request and kept for the next ones (None when the display image has expired)."""
    display, mask = store.artefact(job_id, "display", index), store.artefact(job_id, "mask", index)
    results = store.results(job_id)
    if display is None or mask is None or results is None or index >= len(results):
        return None
    data = overlay_from_stored(display, mask, AnalysisResult.model_validate(results[index]))
    store.put_artefact(job_id, "overlay", index, data)
    return data


def job_dicom_output(
    job_id: str,
    kind: DicomKind,
    index: int,
    *,
    settings: Settings,
    api_key_id: str | None = None,
    enforce_owner: bool = False,
) -> bytes:
    """The DICOM SEG or SR (file format) of input ``index`` of a succeeded job.

    Raises:
        JobNotFoundError, JobNotFinishedError, ArtefactNotFoundError: as for ``job_artefact``.
        DicomOutputUnavailableError: the input was not DICOM, or its outputs could not be built.
    """
    _succeeded_input(job_id, index, "DICOM outputs", settings, api_key_id, enforce_owner)
    store = get_backend(settings).store
    data = store.artefact(job_id, kind, index)
    if data is None:
        raise _no_dicom_output(store, job_id, kind, index)
    return data


def _no_dicom_output(store: JobStore, job_id: str, kind: DicomKind, index: int) -> ServiceError:
    """Why input ``index`` has no SEG or SR: not DICOM, not buildable, or expired."""
    error = store.artefact(job_id, "dicom_error", index)
    if error is not None:
        reason = json.loads(error)
        return DicomOutputUnavailableError(
            f"the DICOM outputs of input {index} could not be built: {reason['message']}",
            input_index=index,
            reason=reason["code"],
        )
    results = store.results(job_id) or []
    found = results[index]["input"]["format"] if index < len(results) else None
    if found is not None and found != ImageFormat.DICOM.value:
        return DicomOutputUnavailableError(
            "DICOM outputs need a DICOM input: they reference the source instance and copy its "
            f"patient and study; input {index} is a {found.upper()} image",
            input_index=index,
            input_format=found,
        )
    return ArtefactNotFoundError(f"the {kind.upper()} of input {index} has expired")


async def wait_for_job(
    job_id: str, *, settings: Settings, timeout_s: float, api_key_id: str | None = None
) -> tuple[JobRecord, list[dict[str, Any]] | None]:
    """Wait until the job is final or ``timeout_s`` passed; returns the latest record and, when
    it succeeded, its results (:func:`read_job`).

    Woken by the job-final announcement (``service.jobs.notify``) the moment the job ends, and
    re-reads the record at least every ``FALLBACK_POLL_S`` in case one is lost. Only the
    submitting key's jobs are visible (``get_job(..., enforce_owner=True)``).
    """
    deadline = time.monotonic() + timeout_s
    backend = get_backend(settings)

    def look() -> tuple[JobRecord, list[dict[str, Any]] | None]:
        return read_job(job_id, settings=settings, api_key_id=api_key_id, enforce_owner=True)

    if timeout_s <= 0:
        return await backend.call(look)
    if not backend.listening:
        await to_thread.run_sync(backend.start_listening)
    with backend.waiters.watch(job_id) as finished:
        while True:
            finished.clear()
            record, results = await backend.call(look)
            remaining = deadline - time.monotonic()
            if record.state.final or remaining <= 0:
                return record, results
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), min(remaining, FALLBACK_POLL_S))
