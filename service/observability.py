"""The HTTP side of observability: request ids, request metrics, the access log, ``/metrics``.

``install_observability(app, settings)`` adds one ASGI middleware (``X-Request-ID`` in and out,
request metrics, one access log line per request) and ``GET /metrics``. The log format lives in
``service.logs`` and the metrics in ``service.metrics``, which the queue worker uses without
this module (and without FastAPI).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Final

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.exposition import generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.config import Settings
from service.logs import bind_request_id, reset_request_id
from service.metrics import ERRORS, REQUEST_LATENCY, REQUESTS, metrics_registry, stage_label
from service.problems import PROBLEM_MEDIA_TYPE, TYPE_PREFIX

access_logger = logging.getLogger("service.access")

REQUEST_ID_HEADER: Final = "X-Request-ID"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_CODE_RE = re.compile(r"^[a-z0-9_]{1,64}$")
_MAX_PROBLEM_BYTES: Final = 64 * 1024
UNMATCHED: Final = "<unmatched>"


class ObservabilityMiddleware:
    """Pure ASGI: request id in and out, latency, status and problem-type metrics, access log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request; websocket and lifespan pass through."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = bind_request_id(request_id)
        tracker = _ResponseTracker(send, request_id)
        start = time.perf_counter()
        try:
            await self.app(scope, receive, tracker.send)
        except Exception:
            # The app's 500 handler runs outside user middleware, still in this context:
            # the request id stays bound for its log line (see install_observability).
            _record(scope, 500, f"{TYPE_PREFIX}internal_error", time.perf_counter() - start)
            raise
        _record(scope, tracker.status, tracker.problem_type(), time.perf_counter() - start)
        reset_request_id(token)


def _incoming_request_id(scope: Scope) -> str | None:
    """The caller's ``X-Request-ID`` when it is a safe token (else a new one is made)."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID_RE.match(text) else None
    return None


class _ResponseTracker:
    """Wraps ``send``: adds the request id header, notes the status and problem bodies."""

    def __init__(self, send: Send, request_id: str) -> None:
        self._send = send
        self._header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())
        self.status = 500
        self._problem: bytearray | None = None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            headers = [(k, v) for k, v in message.get("headers", []) if k != self._header[0]]
            message = {**message, "headers": [*headers, self._header]}
            content_type = dict(headers).get(b"content-type", b"")
            if content_type.startswith(PROBLEM_MEDIA_TYPE.encode()):
                self._problem = bytearray()
        elif message["type"] == "http.response.body" and self._problem is not None:
            self._problem += message.get("body", b"")[: _MAX_PROBLEM_BYTES - len(self._problem)]
        await self._send(message)

    def problem_type(self) -> str | None:
        """The ``type`` of the problem document sent, if one was."""
        if self._problem is None:
            return None
        try:
            value = json.loads(bytes(self._problem)).get("type")
        except (ValueError, AttributeError):
            return f"{TYPE_PREFIX}unparsable"
        return value if isinstance(value, str) else None


def _route_template(scope: Scope) -> str:
    """The matched route's path template, with the static prefix of an included router."""
    template = getattr(scope.get("route"), "path_format", None)
    if not isinstance(template, str):
        return UNMATCHED
    try:  # the route knows its path below the include prefix: put the prefix back
        concrete = template.format(**scope.get("path_params", {}))
    except (KeyError, IndexError, ValueError):
        return template
    path = str(scope.get("path", ""))
    return path.removesuffix(concrete) + template if path.endswith(concrete) else template


def _record(scope: Scope, status: int, problem: str | None, seconds: float) -> None:
    """Metrics and the access log line of one finished request."""
    route, method = _route_template(scope), str(scope.get("method", ""))
    path_stage = scope.get("path_params", {}).get("stage")
    stage = stage_label(path_stage or scope.get("state", {}).get("stage"))
    REQUEST_LATENCY.labels(method=method, route=route, stage=stage).observe(seconds)
    REQUESTS.labels(method=method, route=route, status=str(status)).inc()
    if problem is not None:
        code = problem.removeprefix(TYPE_PREFIX)
        ERRORS.labels(type=code if _CODE_RE.match(code) else "other", status=str(status)).inc()
    fields = {"method": method, "route": route, "status": status, "stage": stage}
    fields["duration_ms"] = round(seconds * 1000.0, 3)
    access_logger.info("%s %s %d", method, route, status, extra=fields)


ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]


def _with_request_id(handler: ExceptionHandler) -> ExceptionHandler:
    """The app's 500 handler, adding ``X-Request-ID`` (it runs outside user middleware)."""

    async def handle(request: Request, exc: Exception) -> Response:
        response = await handler(request, exc)
        request_id = getattr(request.state, "request_id", None)
        if request_id:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response

    return handle


def install_observability(app: FastAPI, settings: Settings) -> None:
    """Add the request-id and metrics middleware and ``GET /metrics`` to ``app``.

    Call it after the problem handlers are installed so that 500 responses carry the request
    id too. ``/metrics`` is not in the OpenAPI document and needs no API key: it holds counts
    and durations only; keep it off public networks.
    """
    app.add_middleware(ObservabilityMiddleware)
    for key in (Exception, 500):
        handler = app.exception_handlers.get(key)
        if handler is not None:
            app.exception_handlers[key] = _with_request_id(handler)  # type: ignore[arg-type]
    registry = metrics_registry(settings)

    def metrics() -> Response:
        """Prometheus text exposition of the service's metrics."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
