"""Loading a layer's settings from the environment, with a typed error for a bad value.

Each layer owns its settings class (``models_registry.settings``, ``service.config``,
``service.pacs.config``); they share this loader so that a bad ``BREASTDX_*`` value reads the
same everywhere: a message naming the variable, never a traceback.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings
from pydantic_settings.exceptions import SettingsError as SourceError

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
            (f"{_variable(prefix, error['loc'])}: " if error["loc"] else "") + error["msg"]
            for error in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from None
    except SourceError as exc:  # a list or mapping variable whose value is not JSON
        field = re.search(r'field "([^"]+)"', str(exc))
        name = f"{prefix}{field.group(1).upper()}" if field else "a variable"
        raise SettingsError(f"invalid settings: {name}: not valid JSON") from None


def _variable(prefix: str, loc: tuple[Any, ...]) -> str:
    """The variable an error's location names: ``BREASTDX_RETRY_INTERVALS_S_1`` for an item of
    a list (as before), ``BREASTDX_STAGE_RUNTIMES[brain]`` for a mapping's key or value."""
    head, *rest = map(str, loc)
    if rest and not rest[0].isdigit():  # a mapping: its key, and "[key]" where the key is wrong
        return f"{prefix}{head.upper()}[{rest[0]}]"
    return f"{prefix}{'_'.join([head, *rest]).upper()}"
