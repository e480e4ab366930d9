"""Structured logs for every entry point: JSON lines with request id, job id and model@version.

``configure_logging`` is for entry points (the API, the queue worker, the DICOM listener): one
JSON object per line with the request id, job id and model@version taken from context variables
(:func:`log_context` binds the job's in workers; the HTTP middleware binds the request's). Log
lines carry a fixed set of fields, never ``extra`` values at large, and messages are scrubbed of
DICOM UIDs and image file names, so patient identifiers do not reach the logs even where a
caller slips. No web framework is imported here: the queue worker uses this module.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import IO, Any, Final

from breastdx.errors import BreastdxError

_UID_RE = re.compile(r"\b[0-2](?:\.(?:0|[1-9][0-9]*)){3,}\b")
_FILE_RE = re.compile(  # a path (spaces allowed after a slash) or a bare name, image suffix
    r"(?:/[^\n\"'<>|]*?)?[^\s\"'<>|=/]*\.(?:dcm|dicom|png|jpe?g|tiff?|pgm|bmp|svs|ndpi)\b",
    re.IGNORECASE,
)
_API_FILES: Final = ("/mask.png", "/overlay.png")
_MAX_FRAMES: Final = 12

_request_id: ContextVar[str | None] = ContextVar("breastdx_request_id", default=None)
_job_id: ContextVar[str | None] = ContextVar("breastdx_job_id", default=None)
_model: ContextVar[str | None] = ContextVar("breastdx_model", default=None)


def current_request_id() -> str | None:
    """The id of the request being served in this context, if any."""
    return _request_id.get()


def bind_request_id(request_id: str) -> Token[str | None]:
    """Bind ``request_id`` to the log lines of this context; undo with :func:`reset_request_id`."""
    return _request_id.set(request_id)


def reset_request_id(token: Token[str | None]) -> None:
    _request_id.reset(token)


@contextmanager
def log_context(*, job_id: str | None = None, model: str | None = None) -> Iterator[None]:
    """Bind ``job_id`` and ``model`` (name@version) to every log line inside the block."""
    tokens = [(var, var.set(value)) for var, value in ((_job_id, job_id), (_model, model)) if value]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def _is_ipv4(text: str) -> bool:
    """Four dotted numbers up to 255 (``0.0.0.0``): an address, not a DICOM UID (PS3.5 9.1
    roots are registered and longer)."""
    parts = text.split(".")
    return len(parts) == 4 and all(int(part) <= 255 for part in parts)


def scrub(text: str) -> str:
    """Replace DICOM UIDs and image file names in ``text`` (best effort, defence in depth);
    IPv4 addresses stay."""
    text = _FILE_RE.sub(lambda m: m[0] if m[0].endswith(_API_FILES) else "<file>", text)
    return _UID_RE.sub(lambda m: m[0] if _is_ipv4(m[0]) else "<uid>", text)


def _exception_fields(exc_info: Any) -> dict[str, Any]:
    """Type, message (breastdx errors only: theirs never hold identifiers), code locations."""
    exc_type, exc, tb = exc_info
    frames = [  # the innermost frames as "function (file.py:line)": no paths, no locals
        f"{f.name} ({os.path.basename(f.filename)}:{f.lineno})" for f in traceback.extract_tb(tb)
    ][-_MAX_FRAMES:]
    fields: dict[str, Any] = {"error": getattr(exc_type, "__name__", "Exception"), "stack": frames}
    if isinstance(exc, BreastdxError):
        fields["error_detail"] = scrub(exc.message)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request_id, job_id, model."""

    EXTRA_FIELDS: Final = (
        *("stage", "state", "code", "attempt", "attempts", "inputs", "bytes", "input_index"),
        *("method", "route", "status", "duration_ms", "alias"),
    )

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record``; ``extra`` values outside ``EXTRA_FIELDS`` are dropped."""
        created = datetime.fromtimestamp(record.created, UTC)
        payload: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": scrub(record.getMessage()),
            "request_id": getattr(record, "request_id", None) or _request_id.get(),
            "job_id": getattr(record, "job_id", None) or _job_id.get(),
            "model": getattr(record, "model", None) or _model.get(),
        }
        for key in self.EXTRA_FIELDS:
            value = getattr(record, key, None)
            if isinstance(value, str | int | float | bool):
                payload[key] = scrub(value) if isinstance(value, str) else value
        if record.exc_info and record.exc_info[0] is not None:
            payload |= _exception_fields(record.exc_info)
        return json.dumps(payload, ensure_ascii=False, default=str)


def configure_logging(level: str | int = "INFO", stream: IO[str] | None = None) -> None:
    """Send every log record as a JSON line to ``stream`` (stderr); for entry points only.

    Replaces the root handlers; uvicorn's and RQ's loggers are made to propagate to root so
    that their lines are JSON too. Calling it again replaces the handler it installed.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "rq", "rq.worker"):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True
