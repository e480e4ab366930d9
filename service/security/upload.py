"""The request-size limit (``Content-Length`` checked up front, the body counted as it
streams) and the client abort.

A pure ASGI middleware (it must see the body before Starlette's form parser buffers it): a
declared length over ``max_upload_bytes`` is answered 413 before a byte is read; a body that
grows past the limit while read (chunked uploads, lying headers) raises
:class:`RequestTooLargeError` from ``receive``, which the route's error handling renders as the
same 413 problem.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import RequestTooLargeError, ServiceError
from service.problems import problem_response


class ClientClosedRequestError(ServiceError):
    """The client closed the connection before its request was read: a client abort.

    Rendered as 499 (nginx's "client closed request"), which the client never sees; it keeps
    the abort out of the 5xx counts and the error log.
    """

    code = "client_closed_request"
    title = "Client closed request"
    http_status = 499


def _too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"the request body exceeds the {limit} byte limit", max_upload_bytes=limit
    )


class BodyLimitMiddleware:
    """Refuse request bodies larger than ``limit`` bytes with a 413 problem."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            error = _too_large(self.limit)
            response = problem_response(
                error.http_status, error.code, error.title, error.message, **error.context
            )
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _too_large(self.limit)
            return message

        await self.app(scope, counted, send)
