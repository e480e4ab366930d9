"""Service settings: one typed object from environment variables (prefix ``BREASTDX_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from imaging.limits import DEFAULT_MAX_PIXELS


class Settings(BaseSettings):
    """Read once per process through :func:`get_settings`.

    ``redis_url`` unset means in-process execution (no queue); set, jobs go to RQ workers.
    """

    model_config = SettingsConfigDict(env_prefix="BREASTDX_", env_file=None, extra="ignore")

    redis_url: str | None = Field(
        default=None, description="redis://host:port/db; unset: in process"
    )
    model_store: Path = Field(default=Path("models_registry/store"), description="registry root")
    max_upload_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, gt=0)
    allow_anonymous: bool = Field(default=False, description="serve requests without an API key")
    cors_origins: list[str] = Field(default_factory=list, description="CORS closed when empty")
    log_level: str = Field(default="INFO")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
