"""``/v1/{stage}/analyses`` and ``/v1/analyses/{id}``: submit, poll, fetch the result files.

``Prefer: wait=N`` (RFC 7240; N capped at ``max_wait_s``) holds the answer until the job is
final or N seconds passed: ``200`` with the finished job (and ``Preference-Applied: wait=N``),
else the usual ``202``.

``seg.dcm`` and ``sr.dcm`` exist for DICOM inputs only (``service.dicom.artefacts``); another
input answers 422 ``dicom_output_unavailable``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from breastdx.errors import BreastdxError
from service.config import Settings
from service.deps import CanRead, CanSubmit, SettingsDep, StageDep
from service.dicom.outputs import NoLesionFoundError
from service.errors import ArtefactNotFoundError
from service.jobs.backend import get_backend
from service.jobs.service import (
    job_artefact,
    job_dicom_output,
    job_results,
    submit_analysis,
    wait_for_job,
)
from service.jobs.state import JobRecord, JobState
from service.jobs.store import DicomKind
from service.routes.uploads import MULTIPART_BODY, read_images
from service.schemas import AnalysisQuery, ArtefactQuery, JobPublic, ProblemPublic
from service.security.budget import check_decoded_budget
from service.security.keys import Principal

router = APIRouter(tags=["analyses"])
PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"model": ProblemPublic, "content": {"application/problem+json": {}}}
    for status in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
}
ACCEPTED: dict[int | str, dict[str, Any]] = {
    200: {"model": JobPublic, "description": "finished within Prefer: wait"}
}
DICOM_FILE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/dicom": {}}, "description": "a DICOM file (PS3.10)"}
}
# In process (no Redis), an upload up to this size is checked and submitted on the event loop:
# decoding a histopathology patch (a few kB) takes less than handing it to a thread and back.
INLINE_SUBMIT_BYTES = 32 * 1024
_WAIT = re.compile(r"^\s*wait\s*=\s*(\d{1,6})\s*$", re.IGNORECASE)
PreferHeader = Annotated[
    str | None, Header(description="wait=N: answer when done, at most N s (RFC 7240)")
]


def prefer_wait(prefer: str | None, cap_s: int) -> int | None:
    """The ``wait`` preference in seconds, capped; None when absent (others are ignored)."""
    for token in (prefer or "").split(","):
        match = _WAIT.match(token.split(";")[0])
        if match:
            return min(int(match.group(1)), cap_s)
    return None


async def _public(
    record: JobRecord,
    response: Response,
    settings: SettingsDep,
    wait: int | None,
    results: list[dict[str, Any]] | None = None,
) -> JobPublic:
    """The job's public form; ``results``: read with the record (else read here)."""
    if results is None and record.state is JobState.SUCCEEDED:
        results = await get_backend(settings).call(lambda: job_results(record, settings=settings))
    response.headers["Location"] = f"/v1/analyses/{record.id}"
    response.headers["Cache-Control"] = "no-store"
    if wait is not None:
        response.headers["Preference-Applied"] = f"wait={wait}"
    return JobPublic.from_record(record, results)


@router.post(
    "/{stage}/analyses",
    status_code=202,
    response_model=JobPublic,
    responses=ACCEPTED | PROBLEMS,
    openapi_extra=MULTIPART_BODY,
)
async def create_analysis(
    request: Request,
    response: Response,
    settings: SettingsDep,
    caller: CanSubmit,
    stage: StageDep,
    query: Annotated[AnalysisQuery, Query()],
    prefer: PreferHeader = None,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JobPublic:
    """Submit images of one stage; 202 with the job (``Location`` names it)."""
    images = await read_images(request)

    def submit() -> JobRecord:
        # header reads (chunk CRCs, a deflated DICOM's inflated size) before any decoding, on
        # the thread that then submits: one hop off the event loop per request
        check_decoded_budget(images.data, settings.max_request_decoded_bytes)
        return submit_analysis(
            stage,
            images.data,
            settings=settings,
            filenames=images.filenames,
            model_ref=query.model,
            idempotency_key=idempotency_key,
            api_key_id=caller.key_id,
        )

    if get_backend(settings).in_process and sum(map(len, images.data)) <= INLINE_SUBMIT_BYTES:
        record = submit()  # a small upload, no Redis: cheaper here than a thread hop
    else:
        record = await run_in_threadpool(submit)
    wait = prefer_wait(prefer, settings.max_wait_s)
    results = None
    if wait:
        record, results = await wait_for_job(
            record.id, settings=settings, timeout_s=wait, api_key_id=caller.key_id
        )
    if wait is not None and record.state.final:
        response.status_code = 200
    return await _public(record, response, settings, wait, results)


@router.get("/analyses/{job_id}", response_model=JobPublic, responses=PROBLEMS)
async def read_analysis(
    job_id: str,
    response: Response,
    settings: SettingsDep,
    caller: CanRead,
    prefer: PreferHeader = None,
) -> JobPublic:
    """The job: state, progress, and once succeeded one ``AnalysisResult`` per input."""
    wait = prefer_wait(prefer, settings.max_wait_s)
    record, results = await wait_for_job(
        job_id, settings=settings, timeout_s=wait or 0, api_key_id=caller.key_id
    )
    return await _public(record, response, settings, wait, results)


def _image(
    job_id: str, kind: Literal["mask", "overlay"], index: int, settings: Settings, caller: Principal
) -> Response:
    data = job_artefact(
        job_id, kind, index, settings=settings, api_key_id=caller.key_id, enforce_owner=True
    )
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get("/analyses/{job_id}/mask.png", response_class=Response, responses=PROBLEMS)
def read_mask(
    job_id: str, settings: SettingsDep, caller: CanRead, query: Annotated[ArtefactQuery, Query()]
) -> Response:
    """The lesion mask of input ``index`` at its original size: 0 background, 255 lesion."""
    return _image(job_id, "mask", query.index, settings, caller)


@router.get("/analyses/{job_id}/overlay.png", response_class=Response, responses=PROBLEMS)
def read_overlay(
    job_id: str, settings: SettingsDep, caller: CanRead, query: Annotated[ArtefactQuery, Query()]
) -> Response:
    """The overlay of input ``index``: mask tint and contours, or the histopathology heatmap."""
    return _image(job_id, "overlay", query.index, settings, caller)


def _dicom(
    job_id: str, kind: DicomKind, index: int, settings: Settings, caller: Principal
) -> Response:
    data = job_dicom_output(
        job_id, kind, index, settings=settings, api_key_id=caller.key_id, enforce_owner=True
    )
    return Response(data, media_type="application/dicom", headers={"Cache-Control": "no-store"})


@router.get("/analyses/{job_id}/seg.dcm", response_class=Response, responses=DICOM_FILE | PROBLEMS)
def read_seg(
    job_id: str, settings: SettingsDep, caller: CanRead, query: Annotated[ArtefactQuery, Query()]
) -> Response:
    """The DICOM Segmentation of DICOM input ``index``: the mask, referencing the source.
    404 ``no_lesion_found`` when nothing was found: the SR alone states the absence."""
    try:
        return _dicom(job_id, "seg", query.index, settings, caller)
    except ArtefactNotFoundError:
        if _found_nothing(job_id, query.index, settings, caller):
            raise NoLesionFoundError(
                f"input {query.index}: no lesion was found, so there is no segmentation; "
                "sr.dcm states the absence",
                input_index=query.index,
            ) from None
        raise


def _found_nothing(job_id: str, index: int, settings: Settings, caller: Principal) -> bool:
    """Input ``index`` has its SR and no lesion (the SEG is absent for that reason)."""
    try:
        _dicom(job_id, "sr", index, settings, caller)  # owner and state checked there
    except BreastdxError:
        return False
    results = get_backend(settings).store.results(job_id) or []
    return index < len(results) and results[index]["mask"]["lesion_count"] == 0


@router.get("/analyses/{job_id}/sr.dcm", response_class=Response, responses=DICOM_FILE | PROBLEMS)
def read_sr(
    job_id: str, settings: SettingsDep, caller: CanRead, query: Annotated[ArtefactQuery, Query()]
) -> Response:
    """The TID 1500 Comprehensive SR of DICOM input ``index``: findings, model@version, SEG."""
    return _dicom(job_id, "sr", query.index, settings, caller)
