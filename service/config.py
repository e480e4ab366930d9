"""Service settings: one typed object from environment variables (prefix ``BREASTDX_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from breastdx.settings import SettingsError, load_settings
from imaging.limits import DEFAULT_MAX_PIXELS
from models_registry.card import Stage

__all__ = ["RuntimeName", "Settings", "SettingsError", "get_settings", "load_settings"]

RuntimeName = Literal[
    "auto", "onnxruntime", "openvino", "openvino-bf16", "onnxruntime-int8", "openvino-int8"
]


class Settings(BaseSettings):
    """Read once per process through :func:`get_settings`.

    ``redis_url`` unset means in-process execution (a thread pool in the API process, jobs in
    memory); set, jobs go to per-stage RQ queues served by ``breastdx worker`` processes.
    """

    model_config = SettingsConfigDict(env_prefix="BREASTDX_", env_file=None, extra="ignore")

    redis_url: str | None = Field(
        default=None, description="redis://host:port/db; unset: in process"
    )
    model_store: Path | None = Field(
        default=None,
        description="the registry's primary store, read by models_registry.settings too; "
        "unset: the shipped store",
    )
    max_upload_bytes: int = Field(default=200 * 1024 * 1024, gt=0, description="whole request")
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, gt=0)
    max_files: int = Field(default=256, ge=1, description="images in one request")
    max_request_decoded_bytes: int = Field(
        default=256 * 1024 * 1024,
        gt=0,
        description="decoded pixels of one request as float32 (4 bytes per stored value), "
        "summed from the image headers before decoding",
    )
    allow_anonymous: bool = Field(default=False, description="serve requests without an API key")
    i_know_anonymous_is_public: bool = Field(
        default=False,
        description="let 'breastdx serve' offer anonymous access on a non-loopback address",
    )
    shutdown_timeout_s: int = Field(
        default=10, ge=1, description="after SIGTERM, how long running requests may finish"
    )
    api_keys_file: Path = Field(
        default=Path("var/api-keys.json"), description="hashed API keys when Redis is not set"
    )
    rate_limit_requests: int = Field(default=120, ge=0, description="per key and window; 0: off")
    rate_limit_window_s: int = Field(default=60, ge=1)
    cors_origins: list[str] = Field(default_factory=list, description="CORS closed when empty")
    log_level: str = Field(default="INFO")

    namespace: str = Field(
        default="breastdx",
        pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$",
        description="prefix of queue names and Redis keys",
    )
    job_timeout_s: int = Field(default=300, ge=1, description="one attempt of a job")
    result_ttl_s: int = Field(default=24 * 3600, ge=1, description="succeeded jobs and results")
    failure_ttl_s: int = Field(default=7 * 24 * 3600, ge=1, description="failed jobs")
    upload_ttl_s: int = Field(default=3600, ge=1, description="uploaded bytes at the latest")
    retry_max: int = Field(default=3, ge=0, description="retries of transient failures")
    retry_intervals_s: list[int] = Field(default_factory=lambda: [1, 5, 15])
    lease_ttl_s: int = Field(
        default=30, ge=2, description="a running job whose worker stops renewing is abandoned"
    )
    max_wait_s: int = Field(default=60, ge=0, description="cap of 'Prefer: wait=N'")
    inprocess_workers: int = Field(default=2, ge=1, description="threads, in-process mode")
    inprocess_max_pending: int = Field(default=32, ge=1, description="jobs, in-process mode")
    inprocess_carry_mb: int = Field(
        default=256,
        ge=0,
        description="MiB of checked images that pending in-process jobs keep from their "
        "submission; a job past it decodes its stored bytes again",
    )
    ort_threads: int = Field(default=0, ge=0, description="ONNX Runtime intra-op threads; 0: auto")
    ort_spinning: bool = Field(
        default=False,
        description="ONNX Runtime threads spin-wait between runs: a little lower model latency "
        "on cores of their own, CPU taken from the web server and post-processing otherwise",
    )
    runtime: RuntimeName = Field(
        default="auto",
        description="inference runtime per model: onnxruntime, openvino, or a reduced-precision "
        "one (openvino-bf16; onnxruntime-int8 and openvino-int8, which run the card's int8 file) "
        "for models whose card lists it in reduced_precision; or auto (the fastest installed one "
        "the card allows that passes the parity gate against ONNX Runtime on CPU, chosen at "
        "start; docs/deployment.md, 'Runtimes')",
    )
    stage_runtimes: dict[Stage, RuntimeName] = Field(
        default_factory=dict,
        description="the runtime of one stage's model where it differs from runtime, a JSON "
        'object (e.g. {"histopathology": "onnxruntime-int8"}); a stage it does not name runs '
        "on runtime",
    )
    batch_window_ms: float | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="micro-batching across requests: how long a model run waits for others to "
        "merge with; unset: 5 ms where the model runs on CUDA, off on CPU; 0: off",
    )
    max_batch: int = Field(
        default=16, ge=1, le=1024, description="rows (images, tile windows) per merged model run"
    )
    worker_lanes: int = Field(
        default=2,
        ge=1,
        le=64,
        description="jobs one queue worker runs at once, in threads sharing its model sessions: "
        "two share a 2-core CPU's cores (OpenVINO's one-core-per-run form); more let "
        "micro-batching merge jobs (a GPU worker); 1: one job at a time",
    )
    worker_ttl_s: int = Field(default=60, ge=20, description="RQ worker heartbeat TTL")
    worker_heartbeat_ttl_s: int = Field(
        default=15, ge=3, description="a worker silent this long leaves /readyz"
    )
    maintenance_interval_s: int = Field(
        default=60, ge=1, description="RQ registry cleanup and abandoned-job checks in workers"
    )
    hook_modules: list[str] = Field(
        default_factory=lambda: ["service.pacs.delivery"],
        description="modules that register post-success hooks on import (JSON list in env)",
    )
    redis_retry_after_s: int = Field(default=5, ge=1, description="Retry-After when Redis is down")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.upload_ttl_s < self.job_timeout_s:
            raise ValueError(
                "upload_ttl_s must be at least job_timeout_s: uploads must outlive an attempt"
            )
        if any(i < 0 for i in self.retry_intervals_s):
            raise ValueError("retry_intervals_s must be >= 0 seconds each")
        return self

    def runtime_for(self, stage: Stage | str | None) -> str:
        """The runtime ``stage``'s model runs on: its entry in ``stage_runtimes``, else
        ``runtime`` (also for ``None``: no stage known)."""
        if stage is None:
            return self.runtime
        return self.stage_runtimes.get(Stage(stage), self.runtime)

    def runtimes(self) -> set[str]:
        """Every runtime these settings name: ``runtime`` and each stage's."""
        return {self.runtime, *self.stage_runtimes.values()}

    @property
    def queued(self) -> bool:
        """True when jobs go to RQ workers (Redis configured)."""
        return bool(self.redis_url)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings(Settings, "BREASTDX_")
