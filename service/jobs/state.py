"""The life of an analysis job: its state and the record the job store keeps.

``queued -> running -> succeeded | failed``; a transient failure or a lost worker sends a running
job back to ``queued`` (with ``last_error``) while retries remain. The record holds no pixels and
no patient identifiers: uploaded bytes and result images are stored beside it under the same id.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from breastdx.errors import BreastdxError
from models_registry.card import Stage


class JobState(StrEnum):
    """Where a job is; ``succeeded`` and ``failed`` are final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in {JobState.SUCCEEDED, JobState.FAILED}


class Origin(StrEnum):
    """Who submitted the job."""

    API = "api"
    DICOM = "dicom"
    CLI = "cli"


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobError(BaseModel):
    """Why an attempt or the job failed: the typed error's code and message."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str
    title: str
    detail: str
    input_index: int | None = Field(default=None, description="the input that failed, if one")
    retryable: bool = Field(default=False, description="a transient failure (retried if left)")

    @classmethod
    def from_error(cls, error: BreastdxError, *, retryable: bool = False) -> JobError:
        index = error.context.get("input_index")
        return cls(
            code=error.code,
            title=error.title,
            detail=error.message,
            input_index=index if isinstance(index, int) else None,
            retryable=retryable,
        )


class InputInfo(BaseModel):
    """One uploaded image: its size and hash (the name only if the client gave one)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0)
    size_bytes: int = Field(ge=0)
    sha256: str
    filename: str | None = Field(default=None, description="as sent; never logged")


class JobRecord(BaseModel):
    """What the job store keeps about one analysis job."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    stage: Stage
    state: JobState = JobState.QUEUED
    model_ref: str = Field(description="name@version pinned at submission")
    origin: Origin = Origin.API
    api_key_id: str | None = None
    inputs: list[InputInfo]
    after: list[str] = Field(default_factory=list, description="post-success hooks to run")
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = Field(default=0, ge=0)
    worker: str | None = None
    done: int = Field(default=0, ge=0, description="inputs analysed")
    error: JobError | None = Field(default=None, description="why the job failed (final)")
    last_error: JobError | None = Field(default=None, description="the last failed attempt")
    hooks: dict[str, str] = Field(default_factory=dict, description="hook name -> ok | error")

    @property
    def total(self) -> int:
        return len(self.inputs)

    def log_extra(self) -> dict[str, object]:
        """Fields for log records: ids, stage, model, sizes; never names or identifiers."""
        return {
            "job_id": self.id,
            "stage": self.stage.value,
            "model": self.model_ref,
            "inputs": self.total,
            "bytes": sum(i.size_bytes for i in self.inputs),
        }
