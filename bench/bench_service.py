"""End-to-end latency of the HTTP API per stage, in process and queued, beside model-only time.

For every stage: ``breastdx serve`` in process (no Redis), then ``breastdx serve`` + one
``breastdx worker`` against Redis DB 13 (queued), each a subprocess on a free loopback port;
``--requests`` requests at concurrency 1 and ``--load-requests`` (default: as many as the bare
pipeline's, at least 500) at each higher level (4, 16) of ``POST /v1/{stage}/analyses`` with
``Prefer: wait=30`` (polling ``Location`` on 202), timed from send to result. A throughput is
compared with the bare pipeline's over the same number of images (30 requests at concurrency 16
are two waves, its start and tail as long as its steady state). ``pipeline`` is the server's own
``timings_ms.total`` of the result. Model-only: ``ModelRunner.run`` on the very batch
the pipeline builds for the same image, in this process, in the same run, with the service's
session options (``runner_options(Settings())``) on each runtime of ``--runtimes`` that the card
allows (default: every installed one, reduced-precision ones included; ONNX Runtime on its CPU
provider is the baseline: ``speedup_vs_onnxruntime_cpu``) and with ONNX Runtime's
defaults; the ratio e2e / model-only is taken against the faster of the service's options and
ONNX Runtime's defaults on the runtime the server reported in its results (``model.runtime``).
``overhead_ms``: in-process e2e p50 at concurrency 1 minus that runtime's model-only p50;
``overhead_vs_own_inference_ms``: the same e2e p50 minus the requests' own median
``timings_ms.inference`` (free of the drift between two timings minutes apart);
``refused_upload_ms``: the p50 of as many requests at concurrency 1, in process, each carrying
an upload of the image's size that is no image (zeros), answered 415 once its multipart body is
parsed: the HTTP path without a job, the floor under the overhead. Queue
overhead: queued p50 - in-process p50 at concurrency 1. ``--soak N`` then submits N queued
requests (16 at a time, no wait) and follows every job id to its end: refused submissions, failed
jobs and lost jobs (gone, or not ``succeeded``/``failed`` within the deadline).

Images: a real one per stage from ``../shared/data`` when present (BUSI, mini-MIAS, IDC), else a
generated one. Models: the shipped store (``models_registry/store``) when it holds any, else
``--store``. Redis DB 13 is flushed before and after the queued runs.

Bare pipeline (``bare_pipeline_rps``): the same image through ``analyse_each`` in a plain loop,
16 in flight on the in-process service's job threads, no HTTP, ``--bare-requests`` images (at
least 500 by default: it is every ratio's denominator), once before the service's cells and
once after (a shared machine drifts within minutes: ``bare_pipeline_rps_c16_runs``);
``throughput_vs_bare_c16`` is each mode's throughput at concurrency 16 over the mean of the
two.

CPU: every cell records the CPU time per request of the bench itself (the client), of the server
process and, queued, of the worker and of the loopback Redis (``/proc``; the scheduler the worker
forks is not counted); the bare pipeline records its CPU per image. On a machine whose cores the
client, the server, the worker and Redis share, the throughput a mode can reach is about the
cores over the sum of these, which is what the ratio to the bare pipeline comes down to.
``--modes ""`` measures only the model and the bare pipeline.

``--json FILE`` writes every figure of the run (see :func:`report`); ``--soak 0`` (the default)
skips the soak. The servers run with the environment's ``BREASTDX_RUNTIME`` (default auto).

``--files-per-request N`` sends N copies of the image in each request (a batch of patches, say):
the shares then compare images/s with the bare pipeline's; the latency and phase figures are the
request's.

Usage: ``.venv/bin/python bench/bench_service.py [--store DIR] [--requests 30]
[--load-requests 500] [--concurrency 1,4,16] [--files-per-request 1] [--modes inprocess,queued]
[--stages ultrasound,...] [--soak 2000] [--runtimes onnxruntime,openvino] [--json run.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from bench.loadclient import CLIENTS, Client, Reply, TransportError  # noqa: E402
from imaging import decode  # noqa: E402
from imaging.preprocess import preprocess_decoded, select_frame  # noqa: E402
from models_registry.card import Runtime, Stage  # noqa: E402
from models_registry.registry import Registry  # noqa: E402
from models_registry.runtime import CPU_PROVIDER, installed_runtimes  # noqa: E402
from models_registry.store import DirectoryStore  # noqa: E402
from service.config import Settings  # noqa: E402
from service.inference import analyse_each  # noqa: E402
from service.inference import histopathology as histo  # noqa: E402
from service.inference.pipeline import default_model_ref  # noqa: E402
from service.inference.runner import RunnerOptions, get_runner  # noqa: E402
from service.jobs.execute import runner_options  # noqa: E402

SHIPPED = ROOT / "models_registry" / "store"
REDIS_URL = "redis://127.0.0.1:6379/13"
WAIT_S = 30
FINAL = ("succeeded", "failed")


@dataclass
class Level:
    """One measured cell: a stage, a mode and a concurrency level."""

    stage: str
    mode: str
    concurrency: int
    latencies_s: list[float] = field(default_factory=list)
    pipeline_ms: list[float] = field(default_factory=list)
    phases_ms: list[dict[str, float]] = field(default_factory=list)
    errors: int = 0
    wall_s: float = 0.0
    runtimes: Counter[str] = field(default_factory=Counter)  # model.runtime of the results
    client_cpu_s: float = 0.0  # this process's CPU time while the cell ran: the client's own
    process_cpu_s: dict[str, float] = field(default_factory=dict)  # server, worker, redis
    files: int = 1  # images in each request (--files-per-request)

    @property
    def throughput(self) -> float:
        """Requests per second."""
        return len(self.latencies_s) / self.wall_s if self.wall_s else float("nan")

    @property
    def images_per_s(self) -> float:
        """Images per second: what the bare pipeline's throughput (one image a call) is
        compared with."""
        return self.throughput * self.files

    def p_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) * 1000.0 if self.latencies_s else np.nan


def _generated(stage: Stage) -> bytes:
    """A PNG that passes the stage's input checks: grey speckle, grey breast, pink tissue."""
    rng = np.random.default_rng(0)
    if stage is Stage.HISTOPATHOLOGY:
        low, high = np.array([150, 60, 140]), np.array([230, 140, 220])  # RGB, H&E-like
        tile = rng.integers(low, high, (50, 50, 3)).astype(np.uint8)
        return bytes(cv2.imencode(".png", tile[..., ::-1])[1])
    shape = (256, 320) if stage is Stage.ULTRASOUND else (512, 400)
    grey = rng.gamma(2.0, 30.0, shape).clip(0, 255).astype(np.uint8)
    cv2.ellipse(grey, (shape[1] // 2, shape[0] // 2), (40, 25), 0, 0, 360, 20, -1)
    return bytes(cv2.imencode(".png", grey)[1])


def stage_image(stage: Stage) -> tuple[bytes, str]:
    """The bytes of one image for ``stage`` and where it came from."""
    data = Path(os.environ.get("BREASTDX_DATA_ROOT", ROOT.parent / "shared" / "data"))
    idc = sorted((data / "idc" / "IDC_regular_ps50_idx5").glob("*/1/*.png"))[:1]
    real = {
        Stage.ULTRASOUND: data / "busi/Dataset_BUSI_with_GT/malignant/malignant (1).png",
        Stage.MAMMOGRAPHY: data / "mammography/mini-mias/mdb002.png",
        Stage.HISTOPATHOLOGY: idc[0] if idc else data / "absent.png",
    }[stage]
    if real.is_file():
        return real.read_bytes(), f"real {real.relative_to(data).parts[0]} image"
    return _generated(stage), "generated image"


def model_batch(stage: Stage, image: bytes, registry: Registry, ref: str) -> np.ndarray:
    """The ``(N, C, h, w)`` batch the pipeline builds for ``image`` (same functions, same card)."""
    card = registry.card(ref)
    config = card.preprocess_config()
    decoded = decode(image)
    if stage is not Stage.HISTOPATHOLOGY:
        chw, _, _ = preprocess_decoded(decoded, config)  # (C, h, w)
        return chw[None]
    tiles = histo.TileOptions()
    display = decoded.display(select_frame(decoded.frames, config.frame_policy))
    plan = histo.plan_tiles(display, histo.window_size(card, tiles), tiles)
    return histo.window_batch(display, plan, config)  # (K, C, h, w)


def model_only_ms(
    registry: Registry, ref: str, batch: np.ndarray, options: RunnerOptions, repeat: int = 50
) -> float:
    """p50 of ``runner.run(batch)`` in ms with ``options``, after warm-up."""
    runner = get_runner(ref, registry, options)
    times = []
    for i in range(repeat + 3):
        start = time.perf_counter()
        runner.run(batch)
        if i >= 3:
            times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


BASELINE = "onnxruntime_cpu"


@dataclass
class ModelTimes:
    """Model-only p50 ms of one stage's model: per runtime (the service's session options), and
    with ONNX Runtime's defaults."""

    ref: str
    batch: tuple[int, ...]
    per_runtime: dict[str, float]
    ort_default_ms: float
    bare_runs: list[float] = field(default_factory=list)  # bare_pipeline_rps, before and after
    bare_cpu_ms: list[float] = field(default_factory=list)  # its CPU ms per image, each run
    refused_upload_ms: float = float("nan")  # refused_upload_p50_ms, in process (the module doc)

    @property
    def bare_rps(self) -> float:
        """The pipeline alone at concurrency 16: the mean of its runs before and after the
        service's (NaN when not measured)."""
        return statistics.fmean(self.bare_runs) if self.bare_runs else float("nan")

    def add_bare(self, run: tuple[float, float]) -> None:
        """One run of :func:`bare_pipeline_rps`: requests/s and CPU ms per image."""
        self.bare_runs.append(run[0])
        self.bare_cpu_ms.append(run[1])

    def speedups(self) -> dict[str, float]:
        base = self.per_runtime[BASELINE]
        return {name: base / ms for name, ms in self.per_runtime.items()}

    def served_ms(self, runtime: str) -> float:
        """The model-only time of the runtime the server ran (its ``model.runtime``)."""
        if runtime == Runtime.ONNXRUNTIME.value:
            return self.per_runtime.get(runtime, self.per_runtime[BASELINE])
        return self.per_runtime.get(runtime, float("nan"))


def time_runtimes(
    registry: Registry, ref: str, batch: np.ndarray, runtimes: list[Runtime]
) -> ModelTimes:
    """Model-only p50 per runtime, ONNX Runtime on CPU alone first (the baseline)."""
    service = runner_options(Settings())
    cpu = RunnerOptions(
        intra_op_threads=service.intra_op_threads,
        allow_spinning=service.allow_spinning,
        providers=(CPU_PROVIDER,),
        runtime=Runtime.ONNXRUNTIME,
    )
    per_runtime = {BASELINE: model_only_ms(registry, ref, batch, cpu)}
    card = registry.card(ref)
    for runtime in runtimes:
        if not card.allows(runtime):  # e.g. a reduced-precision one the card does not list
            continue
        options = RunnerOptions(
            intra_op_threads=service.intra_op_threads,
            allow_spinning=service.allow_spinning,
            runtime=runtime,
        )
        per_runtime[runtime.value] = model_only_ms(registry, ref, batch, options)
    default = model_only_ms(registry, ref, batch, RunnerOptions(runtime=Runtime.ONNXRUNTIME))
    return ModelTimes(ref, tuple(batch.shape), per_runtime, default)


def bare_pipeline_rps(
    stage: Stage, image: bytes, registry: Registry, ref: str, requests: int, concurrency: int = 16
) -> tuple[float, float]:
    """Requests/s of the pipeline alone (decode, stage check, preprocessing, model,
    post-processing: ``analyse_each``) over ``requests`` copies of ``image``, ``concurrency`` in
    flight on as many threads as the in-process service runs jobs (``inprocess_workers``), with
    its session options; no HTTP, no job store. The in-process and queued throughputs at
    ``concurrency`` are compared with it. Returns the requests/s and the CPU ms per image (this
    process's, every thread: the model's included)."""
    settings = Settings()
    options = runner_options(settings, stage)

    def one(_: int) -> None:
        outcome = analyse_each(stage, [image], registry=registry, model_ref=ref, options=options,
                               max_pixels=settings.max_pixels)[0]  # fmt: skip
        if isinstance(outcome, Exception):
            raise outcome

    with ThreadPoolExecutor(max_workers=settings.inprocess_workers) as pool:
        list(pool.map(one, range(2)))  # warm-up
        start, cpu = time.perf_counter(), time.process_time()
        list(pool.map(one, range(requests)))  # the pool holds the rest queued: all in flight
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        return requests / wall, cpu * 1000.0 / requests


def submit(client: Client, stage: str, image: bytes, wait: bool = True, files: int = 1) -> Reply:
    """One analysis request of ``files`` copies of ``image``."""
    headers = {"Prefer": f"wait={WAIT_S}"} if wait else {}
    return client.post_file(f"/v1/{stage}/analyses", image, headers=headers, copies=files)


def refused_upload_p50_ms(client: Client, stage: str, size: int, requests: int) -> float:
    """p50 ms of ``requests`` sequential POSTs of ``size`` zero bytes sent as a PNG: parsed and
    refused (415) without a job, decoding or a model; NaN unless every one was a 415."""
    junk, times = bytes(size), []
    for _ in range(requests):
        start = time.perf_counter()
        try:
            status = submit(client, stage, junk).status_code
        except TransportError:
            return float("nan")
        if status != 415:
            return float("nan")
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def follow(client: Client, response: Reply, deadline: float) -> dict[str, object]:
    """Poll a submitted job until it ends; its last body, ``state`` ``lost`` if it never did."""
    body = response.json()
    location = response.headers.get("Location") or f"/v1/analyses/{body['id']}"
    while body.get("state") not in FINAL:
        if time.monotonic() > deadline:
            return {"state": "lost"}
        try:
            response = client.get(location, headers={"Prefer": f"wait={WAIT_S}"})
        except TransportError:
            continue
        if response.status_code != 200:
            return {"state": "lost" if response.status_code == 404 else "error"}
        body = response.json()
    return body


Outcome = tuple[float, float, dict[str, float], str]


def _phases(body: dict[str, Any], e2e_ms: float) -> dict[str, float]:
    """Where one request's time went: the pipeline's own steps, the job's wait for a worker
    (created -> started), its run outside the pipeline (started -> finished minus the pipeline)
    and the rest (HTTP, upload parsing, the submission check, the answer)."""
    times = {
        k: datetime.fromisoformat(body[k]) for k in ("created_at", "started_at", "finished_at")
    }
    waited = (times["started_at"] - times["created_at"]).total_seconds() * 1000.0
    ran = (times["finished_at"] - times["started_at"]).total_seconds() * 1000.0
    steps = {k: float(v) for k, v in body["result"][0]["timings_ms"].items()}
    return {
        **{k: steps.get(k, 0.0) for k in ("decode", "preprocess", "inference", "postprocess")},
        "job-other": ran - steps["total"],
        "queue-wait": waited,
        "http+rest": e2e_ms - waited - ran,
    }


def one_request(client: Client, stage: str, image: bytes, files: int = 1) -> Outcome | None:
    """(seconds from send to a succeeded result, the pipeline's own ms, the phases; of the
    first image where a request carries ``files`` copies); None on any error."""
    start = time.perf_counter()
    try:
        response = submit(client, stage, image, files=files)
        if response.status_code not in (200, 202):
            return None
        body = follow(client, response, time.monotonic() + 120)
    except TransportError:
        return None
    results = body.get("result")
    if body.get("state") != "succeeded" or not isinstance(results, list) or len(results) != files:
        return None  # every image of the request analysed, or an error
    seconds = time.perf_counter() - start
    result = results[0]
    runtime = str(result["model"].get("runtime"))
    return seconds, float(result["timings_ms"]["total"]), _phases(body, seconds * 1000.0), runtime


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used so far (Linux ``/proc``); NaN where
    it cannot be read (another OS, a process gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    client: Client, level: Level, image: bytes, requests: int, pids: dict[str, int] | None = None
) -> Level:
    """Send ``requests`` requests, ``level.concurrency`` at a time (after two warm-up ones);
    ``pids``: processes (server, worker, Redis) whose CPU time the cell also records."""
    for _ in range(2):
        one_request(client, level.stage, image, level.files)
    watched = {name: process_cpu_s(pid) for name, pid in (pids or {}).items()}
    start, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(level.concurrency) as pool:
        jobs = [
            pool.submit(one_request, client, level.stage, image, level.files)
            for _ in range(requests)
        ]
        outcomes = [job.result() for job in jobs]
    level.wall_s = time.perf_counter() - start
    level.client_cpu_s = time.process_time() - cpu
    level.process_cpu_s = {
        name: process_cpu_s(pid) - watched[name] for name, pid in (pids or {}).items()
    }
    level.latencies_s = [o[0] for o in outcomes if o is not None]
    level.pipeline_ms = [o[1] for o in outcomes if o is not None]
    level.phases_ms = [o[2] for o in outcomes if o is not None]
    level.errors = sum(o is None for o in outcomes)
    level.runtimes = Counter(o[3] for o in outcomes if o is not None)
    return level


def soak(client: Client, stage: str, image: bytes, total: int) -> tuple[Counter[str], float]:
    """Submit ``total`` jobs (no wait), then follow every id to its end: outcome counts, seconds."""
    start = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: submit(client, stage, image, wait=False), range(total)))
    accepted = [r for r in responses if r.status_code == 202]
    outcomes: Counter[str] = Counter(refused=total - len(accepted))
    deadline = time.monotonic() + max(300.0, total * 0.25)
    with ThreadPoolExecutor(16) as pool:
        bodies = list(pool.map(lambda r: follow(client, r, deadline), accepted))
    outcomes.update(str(body.get("state")) for body in bodies)
    return outcomes, time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``breastdx ARGS`` as a subprocess, output to ``log``; terminated on exit."""
    with log.open("wb") as out:
        cmd = [sys.executable, "-m", "breastdx.cli", *args]
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=out)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(client: Client, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until ``/readyz`` says ready (models verified, worker alive when queued), at most 120 s."""
    deadline = time.monotonic() + 120
    while True:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"breastdx serve did not get ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.25)


@contextmanager
def servers(
    mode: str, store: Path, logs: Path, client_kind: str
) -> Iterator[tuple[Client, dict[str, int]]]:
    """``breastdx serve`` (and, queued, one ``breastdx worker``) with a client on its port,
    and the pids of the processes serving it (``server``; queued: ``worker`` and ``redis``, the
    loopback Redis's own ``process_id``)."""
    env = {
        "BREASTDX_MODEL_STORE": str(store),
        "BREASTDX_ALLOW_ANONYMOUS": "true",
        "BREASTDX_RATE_LIMIT_REQUESTS": "0",
        "BREASTDX_INPROCESS_MAX_PENDING": "64",
        "BREASTDX_LOG_LEVEL": "WARNING",
    }
    env.update({"BREASTDX_REDIS_URL": REDIS_URL} if mode == "queued" else {})
    if mode == "queued":
        redis.Redis.from_url(REDIS_URL).flushdb()
    port = free_port()
    with ExitStack() as stack:
        log = logs / f"serve-{mode}.log"
        serve = stack.enter_context(process(["serve", "--port", str(port)], env, log))
        pids = {"server": serve.pid}
        if mode == "queued":
            pids["worker"] = stack.enter_context(process(["worker"], env, logs / "worker.log")).pid
            pids["redis"] = int(redis.Redis.from_url(REDIS_URL).info("server")["process_id"])
        client = CLIENTS[client_kind](f"http://127.0.0.1:{port}", timeout=WAIT_S + 30)
        stack.callback(client.close)
        wait_ready(client, serve, log)
        yield client, pids
    if mode == "queued":
        redis.Redis.from_url(REDIS_URL).flushdb()


def machine() -> str:
    cpu = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    names = [ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
    cpu = names[0].split(":", 1)[1].strip() if names else cpu
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"# {cpu}; {os.cpu_count()} logical CPUs; load average {load} at start\n"
        f"# python {platform.python_version()}; onnxruntime {ort.__version__}; "
        f"runtimes installed: {', '.join(r.value for r in installed_runtimes())}"
    )


def default_store(given: Path | None) -> Path:
    """``--store``, else the shipped store when it holds a model."""
    if given is not None:
        return given
    if any(SHIPPED.glob("*/*/card.json")):
        return SHIPPED
    raise SystemExit(f"no model in the shipped store {SHIPPED}; pass --store DIR")


def print_levels(levels: list[Level]) -> None:
    row = "{:<15} {:<10} {:>5} {:>5} {:>9} {:>9} {:>12} {:>8} {:>7} {:>14} {:>24}"
    heads = ("stage", "mode", "conc", "n", "p50 ms", "p95 ms", "pipeline ms", "req/s", "errors")
    print(row.format(*heads, "client cpu ms", "server/worker/redis cpu"))
    for lv in levels:
        pipeline = f"{statistics.median(lv.pipeline_ms):.1f}" if lv.pipeline_ms else "-"
        rate = f"{len(lv.latencies_s) / lv.wall_s:.1f}" if lv.wall_s else "-"
        cells = (lv.stage, lv.mode, lv.concurrency, len(lv.latencies_s))
        times = (f"{lv.p_ms(50):.1f}", f"{lv.p_ms(95):.1f}", pipeline, rate, lv.errors)
        others = "/".join(f"{ms:.2f}" for ms in _process_cpu_ms(lv).values()) or "-"
        print(row.format(*cells, *times, f"{_client_cpu_ms(lv):.2f}", others))
    print(
        "# client cpu ms: the bench's own CPU per request (its HTTP client, on the same cores);"
        " server/worker/redis cpu: each serving process's CPU ms per request (user + system)"
    )
    files = {lv.files for lv in levels}
    if files != {1}:
        print(f"# {', '.join(map(str, sorted(files)))} images per request: images/s = req/s x that")


def served_runtime(levels: list[Level], stage: str) -> str:
    """The runtime the in-process server reported for ``stage`` (its most frequent)."""
    seen: Counter[str] = Counter()
    for lv in levels:
        if lv.stage == stage and lv.mode == "inprocess":
            seen.update(lv.runtimes)
    return seen.most_common(1)[0][0] if seen else Runtime.ONNXRUNTIME.value


def stage_figures(levels: list[Level], stage: str, times: ModelTimes) -> dict[str, Any]:
    """Model-only times, speedups, the served runtime, overheads of one stage."""
    p50 = {(lv.stage, lv.mode, lv.concurrency): lv.p_ms(50) for lv in levels}
    local = p50.get((stage, "inprocess", 1), float("nan"))
    queued = p50.get((stage, "queued", 1), float("nan"))
    runtime = served_runtime(levels, stage)
    served = times.served_ms(runtime)
    top = {lv.mode: lv.images_per_s for lv in levels if lv.stage == stage and lv.concurrency == 16}
    return {
        "model": times.ref,
        "batch": list(times.batch),
        "model_ms": times.per_runtime,
        "speedup_vs_onnxruntime_cpu": times.speedups(),
        "onnxruntime_default_ms": times.ort_default_ms,
        "served_runtime": runtime,
        "served_model_ms": served,
        "overhead_ms": local - served,
        "overhead_vs_own_inference_ms": local - _own_inference_ms(levels, stage),
        "refused_upload_ms": times.refused_upload_ms,
        "e2e_over_model": local / min(served, times.ort_default_ms),
        "queue_overhead_ms": queued - local,
        "bare_pipeline_rps_c16": times.bare_rps,
        "bare_pipeline_rps_c16_runs": times.bare_runs,
        "bare_pipeline_cpu_ms_per_image": times.bare_cpu_ms,
        "throughput_vs_bare_c16": {
            mode: rps / times.bare_rps for mode, rps in top.items() if times.bare_rps > 0
        },
    }


def _own_inference_ms(levels: list[Level], stage: str) -> float:
    """The median model time the in-process concurrency-1 requests report themselves
    (``timings_ms.inference``): e2e p50 minus it is the overhead free of the drift between the
    model-only timing and the requests (minutes apart on a shared machine)."""
    for lv in levels:
        if (lv.stage, lv.mode, lv.concurrency) == (stage, "inprocess", 1) and lv.phases_ms:
            return statistics.median(p["inference"] for p in lv.phases_ms)
    return float("nan")


def print_targets(levels: list[Level], model_ms: dict[str, ModelTimes]) -> None:
    """Model-only time per runtime, speed-up over ONNX Runtime on CPU, the runtime the server
    ran, overhead (e2e p50 - its model-only p50, concurrency 1, in process), queue overhead."""
    row = "{:<15} {:<26} {:<40} {:<10} {:>11} {:>14} {:>15} {:>11} {:>17} {:>24}"
    heads = ("stage", "model", "model-only ms (x vs ORT CPU)", "served", "overhead ms",
             "vs own model", "e2e p50/model", "queue ms", "bare rps", "c16 vs bare")  # fmt: skip
    print("\n" + row.format(*heads))
    for stage, times in model_ms.items():
        fig = stage_figures(levels, stage, times)
        speed = fig["speedup_vs_onnxruntime_cpu"]
        runtimes = ", ".join(f"{k} {v:.2f} ({speed[k]:.2f}x)" for k, v in fig["model_ms"].items())
        ratios = ", ".join(f"{m} {r:.0%}" for m, r in fig["throughput_vs_bare_c16"].items())
        cells = (fig["served_runtime"], f"{fig['overhead_ms']:.1f}",
                 f"{fig['overhead_vs_own_inference_ms']:.1f}", f"{fig['e2e_over_model']:.2f}x",
                 f"{fig['queue_overhead_ms']:.1f}", _bare_cell(times.bare_runs),
                 ratios or "-")  # fmt: skip
        print(row.format(stage, times.ref, runtimes, *cells))
    print(
        "# overhead: in-process e2e p50 - model-only p50 (issue 16's figure); vs own model: "
        "e2e p50 - the requests' own median inference time (no drift between the two timings)"
    )
    for stage, times in model_ms.items():
        if np.isfinite(times.refused_upload_ms):
            floor = times.refused_upload_ms
            print(f"# {stage}: an upload of the image's size refused after parsing (415, no job) "
                  f"{floor:.2f} ms p50: the HTTP path's floor in the overhead")  # fmt: skip
        if times.bare_cpu_ms:
            cpu = "/".join(f"{ms:.2f}" for ms in times.bare_cpu_ms)
            print(f"# {stage}: the bare pipeline's CPU ms per image {cpu} (each run; the service's "
                  "is the client's plus the serving processes' above)")  # fmt: skip


def _bare_cell(runs: list[float]) -> str:
    """The bare pipeline's mean throughput, with its runs where there are two."""
    if len(runs) < 2:
        return f"{statistics.fmean(runs):.1f}" if runs else "nan"
    return f"{statistics.fmean(runs):.1f} ({'/'.join(f'{r:.0f}' for r in runs)})"


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinity (a cell not measured) as None: strict JSON."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def report(
    args: argparse.Namespace,
    levels: list[Level],
    model_ms: dict[str, ModelTimes],
    soaked: tuple[Counter[str], float] | None,
) -> dict[str, Any]:
    """Every figure of the run, JSON-ready (``--json``)."""
    return {
        "command": " ".join(sys.argv),
        "machine": machine(),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "runtime_setting": os.environ.get("BREASTDX_RUNTIME", "auto"),
        "client": args.client,
        "requests_per_cell": args.requests,
        "files_per_request": args.files_per_request,
        "load_requests": args.load_requests,
        "bare_requests": args.bare_requests,
        "stages": {stage: stage_figures(levels, stage, t) for stage, t in model_ms.items()},
        "levels": [
            {
                "stage": lv.stage,
                "mode": lv.mode,
                "concurrency": lv.concurrency,
                "n": len(lv.latencies_s),
                "errors": lv.errors,
                "p50_ms": lv.p_ms(50),
                "p95_ms": lv.p_ms(95),
                "pipeline_p50_ms": statistics.median(lv.pipeline_ms) if lv.pipeline_ms else None,
                "throughput_rps": lv.throughput,
                "files_per_request": lv.files,
                "images_per_s": lv.images_per_s,
                "client_cpu_ms_per_request": _client_cpu_ms(lv),
                "process_cpu_ms_per_request": _process_cpu_ms(lv),
                "runtimes": dict(lv.runtimes),
            }
            for lv in levels
        ],
        "soak": None
        if soaked is None
        else {"requests": args.soak, "outcomes": dict(soaked[0]), "seconds": soaked[1]},
    }


def _per_request_ms(level: Level, cpu_s: float) -> float:
    """``cpu_s`` seconds of CPU over the cell's requests (succeeded or not), in ms each."""
    done = len(level.latencies_s) + level.errors
    return cpu_s * 1000.0 / done if done else float("nan")


def _client_cpu_ms(level: Level) -> float:
    """The bench's own CPU ms per request of the cell (the HTTP client, sharing the cores)."""
    return _per_request_ms(level, level.client_cpu_s)


def _process_cpu_ms(level: Level) -> dict[str, float]:
    """CPU ms per request of the cell of each serving process (server, worker, redis)."""
    return {name: _per_request_ms(level, s) for name, s in level.process_cpu_s.items()}


def print_phases(levels: list[Level]) -> None:
    """Median ms per phase of the concurrency-1 requests (see ``_phases``)."""
    ones = [lv for lv in levels if lv.concurrency == 1 and lv.phases_ms]
    if not ones:
        return
    names = list(ones[0].phases_ms[0])
    print("\n# where the time goes at concurrency 1 (median ms per phase)")
    row = "{:<15} {:<10}" + " {:>10}" * (len(names) + 1)
    print(row.format("stage", "mode", *names, "e2e p50"))
    for lv in ones:
        medians = [statistics.median(p[n] for p in lv.phases_ms) for n in names]
        print(row.format(lv.stage, lv.mode, *(f"{m:.1f}" for m in medians), f"{lv.p_ms(50):.1f}"))
    print(
        "# decode..postprocess: the pipeline's own timings (in process the decode runs in the"
        " submission check, before the job starts); job-other: started -> finished minus the"
        " pipeline (store writes, PNGs); queue-wait: created -> started; http+rest: the rest of"
        " the client's time (HTTP, upload parsing, submission check, answer)"
    )


def _positive(text: str) -> int:
    """An argparse type: an integer of at least 1 (else argparse's usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, help="model store (default: the shipped one)")
    parser.add_argument(
        "--requests", type=_positive, default=30, help="per stage and mode at concurrency 1"
    )
    parser.add_argument(
        "--load-requests", type=_positive, metavar="N",
        help="per stage and mode at each concurrency above 1 (default: --bare-requests; the "
        "throughput there is compared with the bare pipeline's over as many images)",
    )  # fmt: skip
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument(
        "--files-per-request", type=_positive, default=1, metavar="N",
        help="images in each request (copies of the stage's image; default 1): the shares then "
        "compare images/s with the bare pipeline's",
    )  # fmt: skip
    parser.add_argument("--modes", default="inprocess,queued")
    parser.add_argument("--stages", default=",".join(s.value for s in Stage))
    parser.add_argument("--soak", type=int, default=0, help="queued requests to follow; 0: none")
    parser.add_argument("--soak-stage", default=Stage.ULTRASOUND.value)
    parser.add_argument(
        "--runtimes",
        default=",".join(r.value for r in installed_runtimes(reduced_precision=True)),
        help="runtimes to time model-only where the card allows them (ONNX Runtime on CPU is "
        "always the baseline)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every figure here")
    parser.add_argument(
        "--client", choices=sorted(CLIENTS), default="stdlib",
        help="the load generator: stdlib (http.client, bench/loadclient.py) or httpx (the "
        "earlier one, about twice its CPU per request)",
    )  # fmt: skip
    parser.add_argument(
        "--no-bare", dest="bare", action="store_false",
        help="skip the bare pipeline's throughput (the concurrency-16 reference)",
    )  # fmt: skip
    parser.add_argument(
        "--bare-requests", type=_positive, metavar="N",
        help="images through the bare pipeline (default: --requests, at least 500: its "
        "throughput is every ratio's denominator)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    # the counts each part ran (the defaults resolved), as report() writes them
    args.bare_requests = bare_requests = args.bare_requests or max(args.requests, 500)
    args.load_requests = load_requests = args.load_requests or bare_requests
    runtimes = [Runtime(r) for r in args.runtimes.split(",") if r]
    store = default_store(args.store)
    registry = Registry([DirectoryStore(store)])
    images = {stage: stage_image(Stage(stage)) for stage in args.stages.split(",")}
    modes = [m for m in args.modes.split(",") if m]  # "": model-only and bare figures alone
    print(machine())
    print(f"# store {store}; {args.requests} requests at concurrency 1, {load_requests} at "
          f"higher levels; Prefer: wait={WAIT_S}")  # fmt: skip
    model_ms = {}
    for stage, (image, origin) in images.items():
        ref = str(registry.resolve(default_model_ref(Stage(stage), registry)))
        batch = model_batch(Stage(stage), image, registry, ref)
        model_ms[stage] = time_runtimes(registry, ref, batch, runtimes)
        if args.bare:
            model_ms[stage].add_bare(
                bare_pipeline_rps(Stage(stage), image, registry, ref, bare_requests)
            )
        print(f"# {stage}: {origin}, model batch {tuple(batch.shape)}")
    levels, soaked = [], None
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        for mode in modes:
            with servers(mode, store, Path(tmp), args.client) as (client, pids):
                for stage, (image, _) in images.items():
                    for c in (int(c) for c in args.concurrency.split(",")):
                        n = args.requests if c == 1 else load_requests
                        level = Level(stage, mode, c, files=args.files_per_request)
                        levels.append(measure(client, level, image, n, pids))
                    if mode == "inprocess":  # the HTTP path's floor, same upload size
                        model_ms[stage].refused_upload_ms = refused_upload_p50_ms(
                            client, stage, len(image), args.requests
                        )
                if mode == "queued" and args.soak:
                    image = stage_image(Stage(args.soak_stage))[0]
                    soaked = soak(client, args.soak_stage, image, args.soak)
    if args.bare and modes:  # again after the service's cells: the machine drifts
        for stage, (image, _) in images.items():
            ref = model_ms[stage].ref
            model_ms[stage].add_bare(
                bare_pipeline_rps(Stage(stage), image, registry, ref, bare_requests)
            )
    print()
    print_levels(levels)
    print_targets(levels, model_ms)
    print_phases(levels)
    if soaked is not None:
        outcomes, seconds = soaked
        lost = sum(n for state, n in outcomes.items() if state not in ("succeeded", "refused"))
        print(f"\n# soak: {args.soak} queued {args.soak_stage} requests, 16 at a time, no wait")
        print(f"outcomes {dict(outcomes)}; not succeeded {lost}; {seconds:.1f} s")
        print(f"({args.soak / seconds:.1f} jobs/s end to end)")
    if args.json:
        document = report(args, levels, model_ms, soaked)
        args.json.write_text(json.dumps(finite(document), indent=2, allow_nan=False) + "\n")
        print(f"\n# figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
