"""The benchmarks' HTTP client: the standard library's ``http.client``, one keep-alive connection
per client thread, multipart bodies encoded once per image.

On the 2-core machine the load generator shares the cores with the server it measures, so its
own CPU time is taken from the server's: ``httpx`` spent about 1.4 ms of CPU per request here,
this client about 0.6 ms (``bench/bench_service.py --client httpx`` runs the old one;
``client_cpu_ms_per_request`` in its JSON is the figure). It holds only what the benchmarks
need: GET, POST of one file as ``multipart/form-data``, status, headers and the body.

Stdlib only, so both the project's environment and the bench environment (``.venv-bench``,
``bench/bench_peers.py``) import it.
"""

from __future__ import annotations

import http.client
import json
import threading
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class TransportError(Exception):
    """The connection failed (refused, reset, timed out) after one reconnection."""


class Reply:
    """One answer: ``status_code``, ``headers`` (case-insensitive ``get``), ``content``."""

    def __init__(self, status: int, headers: list[tuple[str, str]], content: bytes) -> None:
        self.status_code = status
        self.headers = _Headers({name.lower(): value for name, value in headers})
        self.content = content

    def json(self) -> Any:
        return json.loads(self.content)


class _Headers(dict[str, str]):
    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


@dataclass(frozen=True)
class Upload:
    """One image posted as the ``file`` part, ``copies`` times in one request."""

    data: bytes
    filename: str
    content_type: str
    copies: int = 1


class _Client:
    """What the benchmarks call: ``request``, ``get``, ``post_file``, ``close``."""

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """One request; a failed connection raises :class:`TransportError`."""
        return self._send(method, path, body, headers or {})

    def _send(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Reply:
        raise NotImplementedError

    def get(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        return self.request("GET", path, headers=headers)

    def post_file(
        self,
        path: str,
        data: bytes,
        *,
        filename: str = "image.png",
        content_type: str = "image/png",
        headers: dict[str, str] | None = None,
        copies: int = 1,
    ) -> Reply:
        """POST ``data`` as the ``file`` part of a ``multipart/form-data`` body, ``copies``
        times (one request carrying that many images)."""
        return self._post_file(path, Upload(data, filename, content_type, copies), headers or {})

    def _post_file(self, path: str, upload: Upload, headers: dict[str, str]) -> Reply:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class LoadClient(_Client):
    """Requests to one ``http://host:port``, safe to call from many threads at once."""

    def __init__(self, base_url: str, timeout: float = 60.0) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self._local = threading.local()
        self._bodies: dict[Upload, tuple[bytes, str]] = {}
        self._lock = threading.Lock()

    def _connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None or fresh:
            if connection is not None:
                connection.close()
            connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.connection = connection
        return connection

    def _send(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Reply:
        """On this thread's connection (reconnected once if the server closed it)."""
        for attempt in (0, 1):
            connection = self._connection(fresh=attempt == 1)
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                content = response.read()
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                if attempt == 1:
                    raise TransportError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
                continue
            if response.will_close:
                connection.close()
                self._local.connection = None
            return Reply(response.status, response.getheaders(), content)
        raise AssertionError("unreachable")  # pragma: no cover

    def _post_file(self, path: str, upload: Upload, headers: dict[str, str]) -> Reply:
        with self._lock:  # each body is encoded once
            cached = self._bodies.get(upload)
            if cached is None:
                cached = self._bodies[upload] = _multipart(upload)
        body, boundary = cached
        sent = {"Content-Type": f"multipart/form-data; boundary={boundary}", **headers}
        return self.request("POST", path, body=body, headers=sent)

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


def _multipart(upload: Upload) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{upload.filename}"\r\n'
        f"Content-Type: {upload.content_type}\r\n\r\n"
    ).encode()
    part = head + upload.data + b"\r\n"
    return part * upload.copies + f"--{boundary}--\r\n".encode(), boundary


class HttpxClient(_Client):
    """The same interface on ``httpx`` (the benchmarks' earlier client), for comparison."""

    def __init__(self, base_url: str, timeout: float = 60.0) -> None:
        import httpx

        self._httpx = httpx
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        self._client = httpx.Client(base_url=base_url, timeout=timeout, limits=limits)

    def _send(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Reply:
        try:
            answer = self._client.request(method, path, content=body, headers=headers)
        except self._httpx.TransportError as exc:
            raise TransportError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        return Reply(answer.status_code, list(answer.headers.items()), answer.content)

    def _post_file(self, path: str, upload: Upload, headers: dict[str, str]) -> Reply:
        files = [("file", (upload.filename, upload.data, upload.content_type))] * upload.copies
        try:
            answer = self._client.post(path, files=files, headers=headers)
        except self._httpx.TransportError as exc:
            raise TransportError(f"POST {path}: {type(exc).__name__}: {exc}") from exc
        return Reply(answer.status_code, list(answer.headers.items()), answer.content)

    def close(self) -> None:
        self._client.close()


Client = _Client
CLIENTS: dict[str, type[Client]] = {"stdlib": LoadClient, "httpx": HttpxClient}
