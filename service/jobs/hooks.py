"""Post-success hooks: functions run in the worker after a job succeeded, when its ``after``
list names them (e.g. ``"dicom-delivery"``, registered by ``service.pacs.delivery``).

    @register_hook("dicom-delivery")
    def deliver(record: JobRecord, analyses: list[Analysis], stored: StoredArtefact) -> None: ...

``stored(kind, index)`` reads what the job stored for input ``index`` (``"seg"``, ``"sr"``,
``"mask"``, ...; None when absent), from the job store that ran it (Redis or this process).

A hook runs once, after the results are stored and the job is ``succeeded``: its failure is
logged and recorded in ``JobRecord.hooks`` (``"error: <code>"``) and never fails or re-runs the
analysis. Modules that register hooks are imported at start from ``settings.hook_modules`` (API
process and workers alike, so that submission can refuse an unknown name).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable, Sequence

from breastdx.errors import BreastdxError
from service.errors import UnknownHookError
from service.inference.result import Analysis
from service.jobs.state import JobRecord

logger = logging.getLogger(__name__)

StoredArtefact = Callable[[str, int], bytes | None]
Hook = Callable[[JobRecord, list[Analysis], StoredArtefact], None]
HOOKS: dict[str, Hook] = {}
_LOADED: set[str] = set()


def register_hook(name: str) -> Callable[[Hook], Hook]:
    """Decorator: register ``hook`` under ``name`` (a later registration replaces it)."""

    def decorate(hook: Hook) -> Hook:
        HOOKS[name] = hook
        return hook

    return decorate


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def load_hook_modules(modules: Sequence[str]) -> None:
    """Import each module once; importing it registers its hooks.

    A module that is absent or fails to import is logged and skipped: the API and the workers
    keep serving, and a submission naming one of its hooks is refused as unknown.
    """
    for module in modules:
        if module in _LOADED:
            continue
        _LOADED.add(module)
        if not _installed(module):
            logger.warning("hook module %s is not installed; its hooks are unavailable", module)
            continue
        try:
            importlib.import_module(module)
        except ImportError:
            logger.exception("hook module %s failed to import; its hooks are unavailable", module)


def check_hooks(names: Sequence[str]) -> list[str]:
    """``names`` if every one is registered; else :class:`UnknownHookError` listing the valid."""
    unknown = [name for name in names if name not in HOOKS]
    if unknown:
        valid = ", ".join(sorted(HOOKS)) or "none registered"
        raise UnknownHookError(
            f"unknown post-analysis hook(s) {', '.join(unknown)}; valid hooks: {valid}",
            valid_hooks=sorted(HOOKS),
        )
    return list(names)


def run_hooks(
    record: JobRecord, analyses: list[Analysis], stored: StoredArtefact
) -> dict[str, str]:
    """Run the hooks ``record.after`` names, in order; ``{name: "ok" | "error: <code>"}``."""
    outcomes: dict[str, str] = {}
    for name in record.after:
        hook = HOOKS.get(name)
        if hook is None:
            outcomes[name] = "error: unknown_hook"
            logger.error("hook not registered in this process", extra={**record.log_extra()})
            continue
        try:
            hook(record, analyses, stored)
        except BreastdxError as exc:
            outcomes[name] = f"error: {exc.code}"
            logger.warning("hook %s failed: %s", name, exc.code, extra=record.log_extra())
        except Exception as exc:  # a hook must never fail the analysis it follows
            outcomes[name] = f"error: {type(exc).__name__}"
            logger.exception("hook %s raised", name, extra=record.log_extra())
        else:
            outcomes[name] = "ok"
    return outcomes
