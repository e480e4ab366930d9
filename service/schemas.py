"""API schemas by direction: ``...Query`` in (``extra="forbid"``), ``...Public`` out.

The result of a job is a list of ``AnalysisResult`` (``service.inference.result``), the very
object ``breastdx predict`` writes; it is not redefined here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from imaging.record import ImageFormat
from models_registry.card import ModelCard, Runtime, Stage
from service.inference.result import AnalysisResult
from service.jobs.state import JobError, JobRecord, JobState

MODEL_REF_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}(@[a-z0-9][a-z0-9-]{0,31})?$"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Public(BaseModel):
    model_config = ConfigDict(frozen=True)


class AnalysisQuery(_Request):
    """Query of ``POST /v1/{stage}/analyses``."""

    model: str | None = Field(
        default=None,
        pattern=MODEL_REF_PATTERN,
        description="NAME, NAME@VERSION or NAME@ALIAS; default: the stage's production model",
    )


class ArtefactQuery(_Request):
    """Query of ``GET /v1/analyses/{id}/mask.png``, ``overlay.png``, ``seg.dcm`` and ``sr.dcm``."""

    index: int = Field(default=0, ge=0, description="which input of the job, 0-based")


class JobLinks(_Public):
    self: str
    mask: str | None = Field(default=None, description="mask PNG of input 0 (?index=k)")
    overlay: str | None = Field(default=None, description="overlay PNG of input 0 (?index=k)")
    seg: str | None = Field(
        default=None, description="DICOM SEG of input 0 (?index=k); only with a DICOM input"
    )
    sr: str | None = Field(
        default=None,
        description="DICOM SR (TID 1500) of input 0 (?index=k); only with a DICOM input",
    )


class Progress(_Public):
    done: int = Field(ge=0, description="inputs analysed")
    total: int = Field(ge=1, description="inputs in the job")


class JobPublic(_Public):
    """An analysis job as the API shows it (202 on submission, 200 on GET)."""

    id: str
    state: JobState
    stage: Stage
    model: str = Field(description="name@version that runs (or ran) the job")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int
    progress: Progress
    links: JobLinks
    error: JobError | None = Field(default=None, description="why the job failed")
    last_error: JobError | None = Field(default=None, description="last failed attempt")
    hooks: dict[str, str] = Field(default_factory=dict)
    result: list[AnalysisResult] | None = Field(
        default=None, description="one AnalysisResult per input, once succeeded"
    )

    @classmethod
    def from_record(
        cls, record: JobRecord, results: list[dict[str, Any]] | None = None
    ) -> JobPublic:
        base = f"/v1/analyses/{record.id}"
        done = record.state is JobState.SUCCEEDED
        dicom = any(r["input"]["format"] == ImageFormat.DICOM for r in results or [])
        return cls(
            id=record.id,
            state=record.state,
            stage=record.stage,
            model=record.model_ref,
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            attempts=record.attempts,
            progress=Progress(done=record.done, total=record.total),
            links=JobLinks(
                self=base,
                mask=f"{base}/mask.png" if done else None,
                overlay=f"{base}/overlay.png" if done else None,
                seg=f"{base}/seg.dcm" if done and dicom else None,
                sr=f"{base}/sr.dcm" if done and dicom else None,
            ),
            error=record.error,
            last_error=record.last_error,
            hooks=record.hooks,
            result=[AnalysisResult.model_validate(r) for r in results] if results else None,
        )


class RuntimePublic(_Public):
    """The runtime this process runs a model on (``BREASTDX_RUNTIME``), chosen when it loaded."""

    requested: str = Field(description="auto, onnxruntime or openvino")
    runtime: Runtime
    device: str = Field(description='e.g. "CPUExecutionProvider", "CPU"')
    trials: list[str] = Field(
        description="each runtime tried at load: parity against ONNX Runtime on CPU and time"
    )


class ModelPublic(_Public):
    """A served model: the version its stage's requests run on, with its card."""

    stage: Stage
    ref: str = Field(description="name@version")
    aliases: dict[str, int]
    card: ModelCard
    runtime: RuntimePublic | None = Field(
        default=None,
        description="the runtime this process runs it on; null until a request (or readiness) "
        "loads it here, and in queued mode, where the workers run models (each result names "
        "its runtime in model.runtime)",
    )


class ModelsPublic(_Public):
    models: list[ModelPublic]


class ProblemPublic(_Public):
    """RFC 9457 problem document (``application/problem+json``)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    type: str
    title: str
    status: int
    detail: str
