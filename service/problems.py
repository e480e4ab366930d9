"""RFC 9457 problem documents: every 4xx and 5xx the API returns is rendered here."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from breastdx.errors import BreastdxError

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:breastdx:problem:"


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A ``application/problem+json`` response with a stable ``type`` per error code."""
    body = {"type": TYPE_PREFIX + code, "title": title, "status": status, "detail": detail, **extra}
    headers = dict(headers or {})
    if "retry_after" in extra:
        headers["Retry-After"] = str(extra["retry_after"])
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


async def _breastdx_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, BreastdxError):  # pragma: no cover - registered for this class only
        raise exc
    headers: dict[str, str] | None = getattr(exc, "headers", None)  # e.g. WWW-Authenticate
    return problem_response(
        exc.http_status, exc.code, exc.title, exc.message, headers=headers, **exc.context
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StarletteHTTPException):  # pragma: no cover
        raise exc
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return problem_response(  # keeps the exception's headers, e.g. a 405's Allow (RFC 9110)
        exc.status_code, code, str(exc.detail), str(exc.detail), headers=dict(exc.headers or {})
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    fields = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in errors]
    return problem_response(
        422,
        "validation_error",
        "Invalid request",
        "the request does not match its schema",
        errors=fields,
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", extra={"path": request.url.path})
    return problem_response(500, "internal_error", "Internal error", "an unexpected error occurred")


def install_problem_handlers(app: FastAPI) -> None:
    """Route every error class to its problem renderer."""
    app.add_exception_handler(BreastdxError, _breastdx_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
