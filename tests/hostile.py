"""Hostile inputs, generated (nothing binary is committed): TIFF page loops, decompression bombs
under and over the limits, a million-part multipart body, truncated and lying uploads.

Every generator streams what it compresses, so a 14000 x 14000 bomb costs the test a few
megabytes, not the 196 MB it declares.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator

import httpx
from pydicom import uid

from tests.conftest import REPO_ROOT
from tests.imaging import dicom_factory as dcm

BOUNDARY = "hostile-boundary"
# Its own database: these tests flush it, and other suites use database 15 at the same time.
REDIS_URL = os.environ.get("BREASTDX_HOSTILE_REDIS_URL", "redis://127.0.0.1:6379/13")


# TIFF ------------------------------------------------------------------------------------


def _ifd(width: int, height: int, strip: int, count: int, nxt: int, compression: int = 1) -> bytes:
    """One little-endian IFD: 8-bit grey, one strip at ``strip`` of ``count`` bytes."""
    tags = [
        (256, 4, width),
        (257, 4, height),
        (258, 3, 8),
        (259, 3, compression),
        (262, 3, 1),  # MINISBLACK
        (273, 4, strip),
        (277, 3, 1),
        (278, 4, height),
        (279, 4, count),
    ]
    body = struct.pack("<H", len(tags))
    for tag, kind, value in tags:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        body += struct.pack("<HHI", tag, kind, 1) + packed
    return body + struct.pack("<I", nxt)


_IFD_SIZE = 2 + 9 * 12 + 4


def tiff_chain(pages: int, back_to: int | None, width: int = 1, height: int = 1) -> bytes:
    """``pages`` IFDs in a chain; the last points back to IFD ``back_to`` (None: ends)."""
    first = 8
    offsets = [first + i * _IFD_SIZE for i in range(pages)]
    strip = first + pages * _IFD_SIZE
    out = bytearray(b"II*\x00" + struct.pack("<I", first))
    for i in range(pages):
        last = i == pages - 1
        nxt = (offsets[back_to] if back_to is not None else 0) if last else offsets[i + 1]
        out += _ifd(width, height, strip, width * height, nxt)
    return bytes(out + bytes(width * height))


def tiff_loops() -> dict[str, bytes]:
    """The loops of the finding: A -> B -> B ..., A -> B -> A ..., a page pointing at itself."""
    return {
        "tiff-loop-b-b": tiff_chain(2, back_to=1),
        "tiff-loop-a-b-a": tiff_chain(2, back_to=0),
        "tiff-self-loop": tiff_chain(1, back_to=0),
        "tiff-loop-64x64": tiff_chain(3, back_to=1, width=64, height=64),
    }


def tiff_bomb(side: int) -> bytes:
    """A ``side`` x ``side`` deflate-compressed grey TIFF of zeros (one strip)."""
    strip = _deflate_rows(side, side, filter_byte=False)
    first = 8
    data_at = first + _IFD_SIZE
    header = b"II*\x00" + struct.pack("<I", first)
    return header + _ifd(side, side, data_at, len(strip), 0, compression=8) + strip


# PNG and JPEG 2000 -----------------------------------------------------------------------


def _deflate_rows(width: int, height: int, *, filter_byte: bool) -> bytes:
    compressor = zlib.compressobj(9)
    row = bytes(width + (1 if filter_byte else 0))
    chunks = [compressor.compress(row) for _ in range(height)]
    return b"".join(chunks) + compressor.flush()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_bomb(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG of zeros (about 1000:1): 14000 x 14000 is some 200 KB."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = _deflate_rows(width, height, filter_byte=True)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def j2k_dicom(rows: int, columns: int) -> bytes:
    """A JPEG 2000 mammogram (64 x 48 codestream) whose Image Pixel module declares
    ``rows`` x ``columns``: a bomb by its header."""
    ds, _ = dcm.mammogram()
    encoded = dcm.encode(ds, uid.JPEG2000Lossless)
    encoded.Rows, encoded.Columns = rows, columns
    return dcm.to_bytes(encoded)


def j2k_codestream_bomb() -> bytes:
    """A JPEG 2000 DICOM whose codestream SIZ says more pixels than Rows x Columns."""
    return j2k_dicom(16, 12)


# Multipart -------------------------------------------------------------------------------


def part(data: bytes, name: str = "file", filename: str | None = "x", media: str = "") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if media:
        head += f"Content-Type: {media}\r\n"
    return head.encode() + b"\r\n" + data + b"\r\n"


def multipart(*images: bytes) -> bytes:
    return b"".join(part(image) for image in images) + f"--{BOUNDARY}--\r\n".encode()


def million_parts(count: int = 1_000_000) -> Iterator[bytes]:
    """``count`` one-byte file parts, in 64 KiB pieces, then the closing boundary."""
    one = part(b"\x00")
    per_piece = max(1, 65536 // len(one))
    for start in range(0, count, per_piece):
        yield one * min(per_piece, count - start)
    yield f"--{BOUNDARY}--\r\n".encode()


def million_parts_length(count: int = 1_000_000) -> int:
    return len(part(b"\x00")) * count + len(f"--{BOUNDARY}--\r\n")


# Raw HTTP on loopback (to stop half-way, lie about lengths, stream a body) ---------------


def request_head(path: str, length: int, *, content_type: str | None = None) -> bytes:
    kind = content_type or f"multipart/form-data; boundary={BOUNDARY}"
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()


def read_status(sock: socket.socket, timeout_s: float) -> tuple[int, bytes]:
    """The status code and what was read of the response within ``timeout_s``."""
    sock.settimeout(timeout_s)
    data = b""
    deadline = time.monotonic() + timeout_s
    while b"\r\n\r\n" not in data and time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    if not data.startswith(b"HTTP/1.1 "):
        return 0, data
    return int(data[9:12]), data


def send_streamed(port: int, path: str, pieces: Iterator[bytes], length: int) -> tuple[int, float]:
    """Stream a body; stop sending once the server answers. Returns (status, seconds)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request_head(path, length))
        sock.setblocking(False)
        for piece in pieces:
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break  # an early answer: stop sending
            except BlockingIOError:
                pass
            except OSError:
                break
            try:
                sock.setblocking(True)
                sock.settimeout(10)
                sock.sendall(piece)
                sock.setblocking(False)
            except OSError:
                break  # the server closed the connection after answering
        sock.setblocking(True)
        status, _ = read_status(sock, 30)
    return status, time.monotonic() - start


# Real processes --------------------------------------------------------------------------


def peak_rss_mb(pid: int) -> float:
    """The peak resident set (VmHWM) of process ``pid``, in MB, from /proc."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise AssertionError(f"no VmHWM for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time process ``pid`` has used, from /proc (robust to a loaded host,
    unlike wall time)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(env: dict[str, str], port: int, log: str, *args: str) -> subprocess.Popen[bytes]:
    """``breastdx serve`` on loopback, stdout and stderr to ``log``; waits for /healthz."""
    cmd = [sys.executable, "-m", "breastdx.cli", "serve", "--port", str(port), *args]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            with open(log, encoding="utf-8", errors="replace") as text:
                raise AssertionError(f"the server did not start:\n{text.read()[-4000:]}")
        time.sleep(0.3)


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``; only this process, by its id."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
