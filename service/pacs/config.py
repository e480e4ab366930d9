"""DICOM integration settings: one typed object from environment variables (``BREASTDX_DICOM_``).

Kept apart from ``service.config.Settings`` so the listener, the delivery hook and the PACS client
read their own block; list values accept JSON (``["MOD1","MOD2"]``) or a comma-separated string.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.config import load_settings

AE_TITLE_PATTERN = r"^[\x21-\x5b\x5d-\x7e]([\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$"
_AE_TITLE = re.compile(AE_TITLE_PATTERN)


def check_ae_title(value: str) -> str:
    """An AE title (PS3.5 6.2, VR AE): 1-16 printable characters, no backslash, not blank."""
    value = value.strip()
    if not _AE_TITLE.match(value):
        raise ValueError(
            f"{value!r} is not a valid AE title: 1-16 printable ASCII characters, no backslash"
        )
    return value


class DicomSettings(BaseSettings):
    """Read once per process through :func:`get_dicom_settings`.

    The listener refuses every calling AE title not in ``allowed_aes``; delivery goes to the
    destination AE (when ``destination_ae_title`` and ``destination_port`` are set) and/or to
    the DICOMweb server (when ``dicomweb_url`` is set), which the PACS pull mode also reads.
    """

    model_config = SettingsConfigDict(
        env_prefix="BREASTDX_DICOM_", env_file=None, extra="ignore", validate_default=True
    )

    ae_title: str = Field(default="BREASTDX", description="the listener's own AE title")
    host: str = Field(default="127.0.0.1", description="listener bind address")
    port: int = Field(default=11112, ge=0, le=65535, description="0: any free port")
    allowed_aes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="calling AE titles allowed to associate"
    )
    spool_dir: Path = Field(
        default=Path("var/dicom"), description="dedupe markers, source headers, dead letters"
    )
    destination_ae_title: str | None = Field(default=None, description="C-STORE results here")
    destination_host: str = Field(default="127.0.0.1")
    destination_port: int | None = Field(default=None, ge=1, le=65535)
    dicomweb_url: str | None = Field(default=None, description="DICOMweb root, e.g. .../dicom-web")
    dicomweb_user: str | None = None
    dicomweb_password: SecretStr | None = None
    delivery_attempts: int = Field(default=5, ge=1, le=100, description="tries before dead letter")
    delivery_backoff_s: float = Field(default=2.0, ge=0.0, description="first retry delay")
    delivery_backoff_max_s: float = Field(default=60.0, ge=0.0, description="longest retry delay")
    timeout_s: float = Field(default=30.0, gt=0.0, description="network timeout per operation")
    dedupe_ttl_s: int = Field(
        default=30 * 24 * 3600, ge=60, description="how long a received instance is remembered"
    )

    @field_validator("allowed_aes", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part for part in (p.strip() for p in text.split(",")) if part]
        return value

    @field_validator("allowed_aes")
    @classmethod
    def _check_allowed(cls, value: list[str]) -> list[str]:
        return [check_ae_title(v) for v in value]

    @field_validator("ae_title", "destination_ae_title")
    @classmethod
    def _check_title(cls, value: str | None) -> str | None:
        return None if value is None else check_ae_title(value)

    @field_validator("dicomweb_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("dicomweb_url must start with http:// or https://")
        return value.rstrip("/")

    @property
    def has_destination_ae(self) -> bool:
        return self.destination_ae_title is not None and self.destination_port is not None


@lru_cache(maxsize=1)
def get_dicom_settings() -> DicomSettings:
    return load_settings(DicomSettings, "BREASTDX_DICOM_")
