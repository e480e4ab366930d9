"""Loading a layer's settings from the environment, with a typed error for a bad value.

Each layer owns its settings class (``models_registry.settings``, ``service.config``,
``service.pacs.config``); they share this loader so that a bad ``BREASTDX_*`` value reads the
same everywhere: a message naming the variable, never a traceback.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from breastdx.errors import BreastdxError

S = TypeVar("S", bound=BaseSettings)


class SettingsError(BreastdxError):
    """A ``BREASTDX_*`` environment variable that does not parse."""

    code = "invalid_settings"
    title = "Invalid settings"
    http_status = 500


def load_settings(cls: type[S], prefix: str) -> S:
    """``cls()`` from the environment; a bad value is a :class:`SettingsError` naming the
    variable, not a traceback."""
    try:
        return cls()
    except ValidationError as exc:
        problems = "; ".join(
            (f"{prefix}{'_'.join(map(str, error['loc'])).upper()}: " if error["loc"] else "")
            + error["msg"]
            for error in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from None
