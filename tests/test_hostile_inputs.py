"""The hostile-input suite: generated attacks against the decoder, ``breastdx inspect`` and a real
``breastdx serve`` with a real worker on Redis. Each attack must be answered 4xx within 5 s with
the API's and the worker's peak RSS (VmHWM) below 1.5 GB.

Run it with ``pytest tests/test_hostile_inputs.py`` (docs/security.md). The 5 s are the API
process's CPU time (from /proc), so that a loaded machine does not fail the suite; wall time
only has a generous bound (``WALL_S``) that still catches a server that never answers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from imaging import decode
from imaging.decode import declared_size
from imaging.errors import CorruptImageError
from imaging.raster_tiff import MAX_TIFF_PAGES
from tests import hostile
from tests.conftest import REPO_ROOT
from tests.service import jobs_support as js

NS = "t-hostile"
ROUTE = "/v1/mammography/analyses"
ROUTE_TEMPLATE = "/v1/{stage}/analyses"
RSS_LIMIT_MB = 1500.0
ANSWER_S = 5.0  # CPU seconds of the API process per attack
WALL_S = 60.0


# The decoder and the inspect command -----------------------------------------------------


@pytest.mark.parametrize("name", sorted(hostile.tiff_loops()))
def test_tiff_page_loops_are_refused_at_once(name: str) -> None:
    data = hostile.tiff_loops()[name]
    start = time.process_time()  # CPU time: a loaded machine does not fail it
    with pytest.raises(CorruptImageError, match="loops"):
        decode(data)
    assert time.process_time() - start < 2.0
    assert declared_size(data) is None  # the budget leaves it to decode's typed error


def test_tiff_page_count_is_bounded_and_each_page_read_once() -> None:
    with pytest.raises(CorruptImageError, match=f"more than {MAX_TIFF_PAGES} pages"):
        decode(hostile.tiff_chain(MAX_TIFF_PAGES + 1, back_to=None))
    image = decode(hostile.tiff_chain(3, back_to=None, width=4, height=2))
    assert image.raw.shape == (3, 2, 4)
    size = declared_size(hostile.tiff_chain(3, back_to=None, width=4, height=2))
    assert size is not None and (size.rows, size.columns, size.frames) == (2, 4, 3)


def test_inspect_refuses_a_tiff_loop(tmp_path: Path) -> None:
    path = tmp_path / "loop.tif"
    path.write_bytes(hostile.tiff_loops()["tiff-loop-b-b"])
    cmd = [sys.executable, "-m", "breastdx.cli", "inspect", str(path)]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, timeout=120, check=False)
    out = (done.stdout + done.stderr).decode()
    assert done.returncode != 0, out
    assert "loops" in out and "Traceback" not in out
    assert out.count("\n") < 20  # no line per page visited


# The real server and worker ----------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real worker and ``breastdx serve`` (anonymous, loopback) on Redis database 13."""
    client = js.redis_or_skip(hostile.REDIS_URL)
    client.flushdb()
    root = tmp_path_factory.mktemp("hostile")
    store = js.build_store(root)
    env = js.worker_env(store, NS, BREASTDX_REDIS_URL=hostile.REDIS_URL)
    worker = js.start_worker(env, "--queues", "mammography")
    port = js.free_port()
    log = str(root / "serve.log")
    server_env = env | {"BREASTDX_ALLOW_ANONYMOUS": "true", "BREASTDX_LOG_LEVEL": "INFO"}
    server = hostile.start_server(server_env, port, log)
    try:
        yield {"port": port, "server": server, "worker": worker, "log": log, "env": server_env}
    finally:
        hostile.stop(server)
        js.stop_worker(worker)
        client.flushdb()


def _post(port: int, body: bytes, content_type: str | None = None) -> tuple[int, float, Any]:
    headers = {"Content-Type": content_type or f"multipart/form-data; boundary={hostile.BOUNDARY}"}
    start = time.monotonic()
    response = httpx.post(
        f"http://127.0.0.1:{port}{ROUTE}", content=body, headers=headers, timeout=WALL_S * 2
    )
    seconds = time.monotonic() - start
    body_json = response.json() if response.headers.get("content-type", "").endswith("json") else {}
    return response.status_code, seconds, body_json


def _corpus() -> dict[str, tuple[bytes, set[str]]]:
    """name -> (multipart body, acceptable problem types)."""
    budget = {"decoded_budget_exceeded"}
    corrupt = {"corrupt_image", "truncated_image", "image_too_large"}
    png = js.mammogram_png()
    entries: dict[str, tuple[bytes, set[str]]] = {
        name: (hostile.multipart(data), {"corrupt_image"})
        for name, data in hostile.tiff_loops().items()
    }
    entries |= {
        "tiff-too-many-pages": (
            hostile.multipart(hostile.tiff_chain(MAX_TIFF_PAGES + 1, back_to=None)),
            {"corrupt_image"},
        ),
        "png-bomb-under-pixel-limit": (hostile.multipart(hostile.png_bomb(14000, 14000)), budget),
        "png-bomb-over-pixel-limit": (hostile.multipart(hostile.png_bomb(15000, 15000)), budget),
        "png-four-bombs": (hostile.multipart(*[hostile.png_bomb(14000, 14000)] * 4), budget),
        "tiff-bomb-under-pixel-limit": (hostile.multipart(hostile.tiff_bomb(14000)), budget),
        "tiff-bomb-over-pixel-limit": (hostile.multipart(hostile.tiff_bomb(15000)), budget),
        "j2k-header-under-pixel-limit": (
            hostile.multipart(hostile.j2k_dicom(14000, 14000)),
            budget,
        ),
        "j2k-header-over-pixel-limit": (hostile.multipart(hostile.j2k_dicom(30000, 30000)), budget),
        "j2k-codestream-larger-than-header": (
            hostile.multipart(hostile.j2k_codestream_bomb()),
            corrupt,
        ),
        "truncated-png": (hostile.multipart(png[: len(png) // 2]), corrupt),
        "text-sent-as-png": (
            hostile.part(b"hello", media="image/png") + f"--{hostile.BOUNDARY}--\r\n".encode(),
            {"unrecognised_format"},
        ),
        "png-sent-as-json": (
            hostile.part(png, media="application/json") + f"--{hostile.BOUNDARY}--\r\n".encode(),
            {"unsupported_media_type"},
        ),
        "extra-form-field": (
            hostile.part(b"1", name="note", filename=None) + hostile.multipart(png),
            {"malformed_request"},
        ),
        "no-file-part": (f"--{hostile.BOUNDARY}--\r\n".encode(), {"no_input", "malformed_request"}),
        "multipart-cut-short": (
            hostile.multipart(png)[:-40],
            {"malformed_request", "no_input"},
        ),
    }
    return entries


CORPUS = _corpus()


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_hostile_upload_is_a_quick_4xx(stack: dict[str, Any], name: str) -> None:
    body, types = CORPUS[name]
    cpu = hostile.cpu_seconds(stack["server"].pid)
    status, seconds, problem = _post(stack["port"], body)
    cpu = hostile.cpu_seconds(stack["server"].pid) - cpu
    assert 400 <= status < 500, (name, status, problem)
    assert cpu < ANSWER_S and seconds < WALL_S, (name, cpu, seconds)
    assert problem.get("type", "").removeprefix("urn:breastdx:problem:") in types, problem
    assert hostile.peak_rss_mb(stack["server"].pid) < RSS_LIMIT_MB


@pytest.mark.integration
def test_a_million_one_byte_parts_are_refused_while_parsing(stack: dict[str, Any]) -> None:
    count = 1_000_000
    cpu = hostile.cpu_seconds(stack["server"].pid)
    status, seconds = hostile.send_streamed(
        stack["port"], ROUTE, hostile.million_parts(count), hostile.million_parts_length(count)
    )
    cpu = hostile.cpu_seconds(stack["server"].pid) - cpu
    assert status == 413 and cpu < ANSWER_S and seconds < WALL_S, (status, cpu, seconds)
    assert hostile.peak_rss_mb(stack["server"].pid) < RSS_LIMIT_MB


@pytest.mark.integration
def test_lying_content_length_is_refused_before_reading(stack: dict[str, Any]) -> None:
    with socket.create_connection(("127.0.0.1", stack["port"]), timeout=10) as sock:
        sock.sendall(hostile.request_head(ROUTE, 10 * 1024**3) + b"--x")
        status, _ = hostile.read_status(sock, WALL_S)
    assert status == 413


def _requests_by_status(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("breastdx_http_requests_total{") and f'route="{ROUTE_TEMPLATE}"' in line:
            status = line.split('status="', 1)[1].split('"', 1)[0]
            counts[status] = counts.get(status, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


@pytest.mark.integration
def test_client_gone_mid_upload_is_a_499_not_a_500(stack: dict[str, Any]) -> None:
    before = _requests_by_status(stack["port"])
    log_start = Path(stack["log"]).stat().st_size
    body = hostile.multipart(js.mammogram_png())
    with socket.create_connection(("127.0.0.1", stack["port"]), timeout=10) as sock:
        sock.sendall(hostile.request_head(ROUTE, len(body) + 100_000) + body[: len(body) // 2])
        time.sleep(0.5)
    js.wait_until(
        lambda: _requests_by_status(stack["port"]).get("499", 0) > before.get("499", 0),
        timeout_s=30,
    )
    after = _requests_by_status(stack["port"])
    assert after.get("500", 0) == before.get("500", 0)
    with open(stack["log"], encoding="utf-8", errors="replace") as handle:
        handle.seek(log_start)
        lines = [json.loads(line) for line in handle if line.startswith("{")]
    assert not [line for line in lines if line["level"] in ("ERROR", "CRITICAL")], lines
    assert any("client abort" in line["message"] for line in lines), lines


@pytest.mark.integration
def test_memory_stays_bounded_and_an_image_within_budget_is_analysed(stack: dict[str, Any]) -> None:
    """The 14000 x 14000 PNG and four of them are refused from their headers; a 6000 x 6000
    one (within the budget) is analysed by the worker; neither process passes 1.5 GB."""
    port = stack["port"]
    status, _, problem = _post(port, hostile.multipart(hostile.png_bomb(14000, 14000)))
    assert status == 413 and problem["type"].endswith("decoded_budget_exceeded")
    status, _, _ = _post(port, hostile.multipart(*[hostile.png_bomb(14000, 14000)] * 4))
    assert status == 413
    response = httpx.post(
        f"http://127.0.0.1:{port}{ROUTE}",
        files={"file": ("big.png", js.png(_mammogram(6000)), "image/png")},
        headers={"Prefer": "wait=120"},
        timeout=180,
    )
    assert response.status_code in (200, 202), response.text
    job = response.json()
    deadline = time.monotonic() + 240
    while job["state"] not in ("succeeded", "failed") and time.monotonic() < deadline:
        job = httpx.get(
            f"http://127.0.0.1:{port}/v1/analyses/{job['id']}",
            headers={"Prefer": "wait=30"},
            timeout=60,
        ).json()
    assert job["state"] == "succeeded", job
    assert job["result"][0]["input"]["rows"] == 6000
    assert hostile.peak_rss_mb(stack["server"].pid) < RSS_LIMIT_MB
    assert hostile.peak_rss_mb(stack["worker"].pid) < RSS_LIMIT_MB


def _mammogram(side: int) -> Any:
    import cv2
    import numpy as np

    image = np.zeros((side, side), np.uint8)
    cv2.ellipse(image, (0, side // 2), (side * 6 // 7, side // 2 - 10), 0, -90, 90, 170, -1)
    cv2.circle(image, (side // 3, side // 2), side // 20, 255, -1)
    return image


@pytest.mark.integration
def test_sigterm_stops_the_server_with_a_request_in_flight(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    port = js.free_port()
    env = stack["env"] | {"BREASTDX_SHUTDOWN_TIMEOUT_S": "3"}
    server = hostile.start_server(env, port, str(tmp_path / "serve.log"))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(hostile.request_head(ROUTE, 1_000_000) + b"--" + hostile.BOUNDARY.encode())
            time.sleep(0.5)  # the request is being read: a slow client holds it open
            os.kill(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    finally:
        hostile.stop(server)
    assert server.returncode is not None
