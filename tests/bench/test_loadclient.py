"""``bench/loadclient.py``, the benchmarks' HTTP client, against a real HTTP server: the
multipart body a FastAPI form parser reads, keep-alive and reconnection, headers, errors."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from python_multipart.multipart import MultipartParser, parse_options_header

from bench.loadclient import CLIENTS, LoadClient, TransportError


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[str, str, int]]] = []  # (method, path, client port)

    def _answer(self, status: int, body: bytes, close: bool = False, parts: int = 0) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Parts", str(parts))
        self.send_header("X-Echo-Path", self.path)
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.seen.append(("GET", self.path, self.client_address[1]))
        self._answer(200, b'{"ok": true}', close=self.path == "/close")

    def do_POST(self) -> None:
        self.seen.append(("POST", self.path, self.client_address[1]))
        length = int(self.headers["Content-Length"])
        _, options = parse_options_header(self.headers["Content-Type"])
        parts: list[bytes] = []
        parser = MultipartParser(
            options[b"boundary"],
            {"on_part_begin": lambda: parts.append(b""),
             "on_part_data": lambda data, start, end: parts.__setitem__(
                 -1, parts[-1] + data[start:end])},
        )  # fmt: skip
        parser.write(self.rfile.read(length))
        parser.finalize()
        self._answer(201, b"".join(parts), parts=len(parts))

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.seen.clear()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("kind", sorted(CLIENTS))
def test_posts_one_file_as_multipart_and_reads_the_answer(server: str, kind: str) -> None:
    client = CLIENTS[kind](server, timeout=10)
    image = bytes(range(256)) * 40  # every byte value, the boundary's neighbours included
    reply = client.post_file("/v1/ultrasound/analyses", image, headers={"Prefer": "wait=30"})
    assert reply.status_code == 201 and reply.content == image
    assert reply.headers.get("x-echo-path") == reply.headers.get("X-Echo-Path")
    assert reply.headers.get("X-Echo-Path") == "/v1/ultrasound/analyses"
    assert client.get("/readyz").json() == {"ok": True}
    client.close()


@pytest.mark.parametrize("kind", sorted(CLIENTS))
def test_posts_copies_of_a_file_as_that_many_parts(server: str, kind: str) -> None:
    """``copies``: one request carrying the image several times (a batch of patches)."""
    client = CLIENTS[kind](server, timeout=10)
    image = bytes(range(256)) * 8
    for copies in (3, 1):
        reply = client.post_file("/v1/histopathology/analyses", image, copies=copies)
        assert reply.status_code == 201 and reply.headers.get("X-Parts") == str(copies)
        assert reply.content == image * copies
    client.close()


def test_keeps_one_connection_per_thread_and_reconnects_when_closed(server: str) -> None:
    client = LoadClient(server, timeout=10)
    for path in ("/a", "/b", "/close", "/c"):
        assert client.get(path).status_code == 200
    ports = [port for _, _, port in _Handler.seen]
    assert ports[0] == ports[1] == ports[2] != ports[3]  # kept alive until the server closed it
    client.close()


def test_a_refused_connection_is_a_transport_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        client = LoadClient(f"http://127.0.0.1:{port}", timeout=2)
        with pytest.raises(TransportError, match="GET /readyz: ConnectionRefusedError"):
            client.get("/readyz")
