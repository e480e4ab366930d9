"""The registry's own settings: where its stores are, read from the environment.

``BREASTDX_MODEL_STORE``: the primary store, a path or URI (unset: the shipped store,
``models_registry/store``); ``BREASTDX_EXTRA_MODEL_STORES``: more stores read after it,
comma-separated. Every entry point that opens the default registry (``breastdx models``,
``predict``, ``evaluate``, ``export --register``, the service and its workers) reads them here
through :meth:`models_registry.registry.Registry.default`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from breastdx.settings import load_settings
from models_registry.store import EXTRA_STORES_ENV, default_store_locations


class RegistrySettings(BaseSettings):
    """Where the registry's stores are; read through :func:`registry_settings`."""

    model_config = SettingsConfigDict(env_prefix="BREASTDX_", env_file=None, extra="ignore")

    model_store: str | None = Field(
        default=None, description="primary store (path or URI); unset: the shipped store"
    )
    extra_model_stores: str = Field(
        default="", description="stores read after the primary, comma-separated paths or URIs"
    )

    def locations(self, primary: Path | str | None = None) -> list[Path | str]:
        """The primary store (``primary`` in place of ``model_store`` when given), then the
        extra stores."""
        first = primary if primary is not None else self.model_store
        return default_store_locations(first, {EXTRA_STORES_ENV: self.extra_model_stores})


def registry_settings() -> RegistrySettings:
    """The settings from the environment (read on each call: they are two variables).

    Raises:
        SettingsError: a variable does not parse.
    """
    return load_settings(RegistrySettings, "BREASTDX_")
