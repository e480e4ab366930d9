"""breastdx beside serving peers: the same model, the same work per request, the same client.

Servers, each alone on the machine in its own subprocess on a free loopback port, one after the
other: ``breastdx serve`` in process (no Redis) as ``.venv-serve`` runs it (uvloop and
httptools, which the ``api`` extra installs), the same with both hidden so that uvicorn falls
back to asyncio and h11 (``breastdx-h11``), the same with micro-batching forced on
(``breastdx-batch``: ``BREASTDX_BATCH_WINDOW_MS``, max batch 16, which raises the job threads to
16) and, to tell the two apart, 16 job threads without batching (``breastdx-threads``),
LitServe and BentoML (``bench/peers/``). Every peer runs breastdx's own request work
(``bench/peers/common.py``: ``analyse_each`` on the stage's production model with the service's
ONNX Runtime options, then the mask PNG and display image breastdx stores per job) with
``--parallel`` analyses at a time (breastdx: its in-process job threads; LitServe: inference
worker processes; BentoML: threads of its sync API). Triton is not here: PyPI's ``tritonserver``
is a placeholder that refuses to install (``bench/constraints-bench.txt``).

The client is ``bench/loadclient.py`` (the standard library's ``http.client``, one keep-alive
connection per client thread, as ``bench/bench_service.py`` uses; its own CPU per request is
about half ``httpx``'s, which on 2 cores the servers get back): per server, ``--warmup``
requests, then ``--requests`` POSTs of the same image as a multipart ``file`` part at each
concurrency level (breastdx with ``Prefer: wait=30``), timed from send to the full answer; every
answer's malignancy probability must equal breastdx's own on the runtime the answer names (else
the request counts as an error; each server makes its own ``BREASTDX_RUNTIME`` choice, default
auto, and each cell records the runtimes that answered). ``--rounds`` repeats the sequence of
servers and pools the figures (a loaded machine drifts; the final run wants the idle machine).

Needs the bench environment (``make bench-peers`` makes ``.venv-bench`` and runs this):
``.venv-bench/bin/python bench/bench_peers.py [--stages ultrasound] [--requests 60]
[--concurrency 1,4,16] [--servers breastdx,litserve,...] [--json FILE]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS = BENCH / "peers"
SHIPPED = ROOT / "models_registry" / "store"
WAIT_S = 30
READY_S = 240.0
BATCH_WINDOW_MS = 5
BATCH_MAX = 16
sys.path.insert(0, str(ROOT))  # bench.loadclient, from a checkout
from bench.loadclient import LoadClient, TransportError  # noqa: E402

PACKAGES = ("onnxruntime", "numpy", "fastapi", "uvicorn", "uvloop", "litserve", "bentoml")


@dataclass(frozen=True)
class Server:
    """How to start one server and ask it for one analysis."""

    name: str
    command: tuple[str, ...]  # {port} and {python} are filled in
    path: str  # {stage} is filled in
    ready: str
    env: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    cwd: Path = ROOT
    hide_uvloop: bool = False


def _breastdx(name: str, *env: tuple[str, str], hide_uvloop: bool = False) -> Server:
    return Server(
        name,
        ("{python}", "-m", "breastdx.cli", "serve", "--port", "{port}"),
        "/v1/{stage}/analyses",
        "/readyz",
        env=env,
        headers=(("Prefer", f"wait={WAIT_S}"),),
        hide_uvloop=hide_uvloop,
    )


SERVERS = {
    server.name: server
    for server in (
        _breastdx("breastdx"),
        _breastdx("breastdx-h11", hide_uvloop=True),
        _breastdx("breastdx-threads", ("BREASTDX_INPROCESS_WORKERS", str(BATCH_MAX))),
        _breastdx(
            "breastdx-batch",
            ("BREASTDX_BATCH_WINDOW_MS", str(BATCH_WINDOW_MS)),
            ("BREASTDX_MAX_BATCH", str(BATCH_MAX)),
        ),
        Server(
            "litserve",
            ("{python}", "litserve_app.py", "{port}"),
            "/predict",
            "/health",
            cwd=PEERS,
        ),
        Server(
            "bentoml",
            (
                "{bentoml}",
                "serve",
                "bentoml_app:Analyser",
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
            ),
            "/analyse",
            "/readyz",
            cwd=PEERS,
        ),
    )
}


@dataclass
class Cell:
    """One server, stage and concurrency level, pooled over rounds."""

    server: str
    stage: str
    concurrency: int
    latencies_s: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    errors: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0  # CPU time of the server's processes while the cell ran
    runtimes: Counter[str] = field(default_factory=Counter)  # model.runtime of the answers

    def p_ms(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_s, q)) * 1000.0 if self.latencies_s else None

    @property
    def throughput(self) -> float | None:
        return len(self.latencies_s) / self.wall_s if self.wall_s else None

    def figures(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "stage": self.stage,
            "concurrency": self.concurrency,
            "n": len(self.latencies_s),
            "errors": self.errors,
            "p50_ms": self.p_ms(50),
            "p95_ms": self.p_ms(95),
            "throughput_rps": self.throughput,
            "mean_batch_size": float(np.mean(self.batch_sizes)) if self.batch_sizes else None,
            "server_cpu_ms_per_request": (
                self.cpu_s * 1000.0 / len(self.latencies_s) if self.latencies_s else None
            ),
            "runtimes": dict(self.runtimes),
        }


def stage_image(stage: str) -> tuple[bytes, str]:
    """The image ``bench/bench_service.py`` uses for ``stage`` (a real one where the data is)."""
    sys.path.insert(0, str(BENCH))
    from bench_service import stage_image as service_image

    from models_registry.card import Stage

    return service_image(Stage(stage))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _environment(
    server: Server, stage: str, store: Path, parallel: int, tmp: Path
) -> dict[str, str]:
    env = {
        **os.environ,
        "BREASTDX_MODEL_STORE": str(store),
        "BREASTDX_ALLOW_ANONYMOUS": "true",
        "BREASTDX_RATE_LIMIT_REQUESTS": "0",
        "BREASTDX_INPROCESS_WORKERS": str(parallel),
        "BREASTDX_INPROCESS_MAX_PENDING": "64",
        "BREASTDX_LOG_LEVEL": "WARNING",
        "BENCH_STAGE": stage,
        "BENCH_PARALLEL": str(parallel),
        "BENTOML_HOME": str(tmp / "bentoml"),
        "PYTHONPATH": str(ROOT),
        **dict(server.env),
    }
    env.pop("BREASTDX_REDIS_URL", None)
    if server.hide_uvloop:  # uvicorn falls back to asyncio and h11
        hidden = tmp / "hidden"
        for module in ("uvloop", "httptools"):
            (hidden / module).mkdir(parents=True, exist_ok=True)
            (hidden / module / "__init__.py").write_text(
                f"raise ImportError('{module} hidden by bench_peers (breastdx-h11)')\n"
            )
        env["PYTHONPATH"] = f"{hidden}{os.pathsep}{ROOT}"
    return env


@contextmanager
def running(
    server: Server, stage: str, store: Path, parallel: int, tmp: Path
) -> Iterator[tuple[LoadClient, int]]:
    """The server in its own session on a free port, ready: a client on it, its pid."""
    port = free_port()
    python = sys.executable
    fill = {"port": str(port), "python": python, "bentoml": str(Path(python).parent / "bentoml")}
    command = [part.format(**fill) for part in server.command]
    log = tmp / f"{server.name}-{stage}.log"
    env = _environment(server, stage, store, parallel, tmp)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=server.cwd, env=env, stdout=out, stderr=out, start_new_session=True
        )
    client = LoadClient(f"http://127.0.0.1:{port}", timeout=WAIT_S + 30)
    try:
        _wait_ready(client, server, proc, log)
        yield client, proc.pid
    finally:
        client.close()
        _stop(proc)


def _wait_ready(client: LoadClient, server: Server, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_S
    while True:
        try:
            if client.get(server.ready).status_code == 200:
                return
        except TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:]
            raise SystemExit(f"{server.name} did not get ready:\n{tail}")
        time.sleep(0.25)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (its workers too), SIGKILL after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 9)  # workers that outlived their parent


def tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of the live processes descended from ``root`` (a server and
    its workers, however they group themselves): unlike wall time, a figure that other load
    on the machine barely moves."""
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the name: state, ppid
        except OSError:
            continue  # gone meanwhile
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        times[pid] = int(fields[11]) + int(fields[12])  # utime, stime
    tree, grew = {root}, True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return sum(times.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


# (seconds, malignancy probability, batch size, the runtime that ran the model)
Answer = tuple[float, float, int, str] | None


def one_request(client: LoadClient, server: Server, stage: str, image: bytes) -> Answer:
    """One analysis, timed from send to the full answer; None on any failure."""
    start = time.perf_counter()
    try:
        response = client.post_file(
            server.path.format(stage=stage), image, headers=dict(server.headers)
        )
    except TransportError:
        return None
    seconds = time.perf_counter() - start
    if response.status_code != 200:
        return None
    body = response.json()
    if body.get("state") != "succeeded":
        return None
    result = body["result"][0]
    probability = (result.get("malignancy") or {}).get("probability")
    value = float(probability if probability is not None else np.nan)
    return seconds, value, result["batch_size"], result["model"]["runtime"]


def measure(
    client: LoadClient,
    server: Server,
    cell: Cell,
    image: bytes,
    requests: int,
    expected: Callable[[str], float] | None,
    server_pid: int,
) -> None:
    """``requests`` requests, ``cell.concurrency`` at a time, added to ``cell``."""
    cpu = tree_cpu_s(server_pid)
    start = time.perf_counter()
    with ThreadPoolExecutor(cell.concurrency) as pool:
        answers = list(
            pool.map(lambda _: one_request(client, server, cell.stage, image), range(requests))
        )
    cell.wall_s += time.perf_counter() - start
    cell.cpu_s += tree_cpu_s(server_pid) - cpu
    for answer in answers:
        agrees = answer is not None and (
            expected is None
            or np.isclose(answer[1], expected(answer[3]), rtol=1e-4, atol=1e-5, equal_nan=True)
        )
        if answer is None or not agrees:
            cell.errors += 1
            continue
        cell.latencies_s.append(answer[0])
        cell.batch_sizes.append(answer[2])
        cell.runtimes[answer[3]] += 1


def reference(stage: str, image: bytes, store: Path, runtime: str) -> float:
    """breastdx's own malignancy probability for ``image`` on ``runtime``: every answer must
    equal it for the runtime the answer names (each server process makes its own runtime
    choice, ``BREASTDX_RUNTIME``; two runtimes a card allows agree only within its gate)."""
    from models_registry.registry import Registry
    from models_registry.store import DirectoryStore
    from service.inference import analyse
    from service.inference.runner import RunnerOptions
    from service.inference.runtime_choice import parse_runtime

    options = RunnerOptions(runtime=parse_runtime(runtime))
    registry = Registry([DirectoryStore(store)])
    analysis = analyse(stage, [image], registry=registry, options=options)[0]
    probability = analysis.result.malignancy.probability if analysis.result.malignancy else None
    return float(probability if probability is not None else np.nan)


def references(stage: str, image: bytes, store: Path) -> Callable[[str], float]:
    """:func:`reference` per runtime, each computed once."""
    return cache(lambda runtime: reference(stage, image, store, runtime))


def run(args: argparse.Namespace) -> list[Cell]:
    levels = [int(c) for c in args.concurrency.split(",")]
    cells: dict[tuple[str, str, int], Cell] = {}
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        for stage in args.stages.split(","):
            image, origin = stage_image(stage)
            expected = references(stage, image, args.store)
            print(f"# {stage}: {origin} ({len(image)} bytes)")
            for round_ in range(args.rounds):
                for name in args.servers.split(","):
                    server = SERVERS[name]
                    started = running(server, stage, args.store, args.parallel, Path(tmp))
                    with started as (client, pid):
                        for _ in range(args.warmup):
                            one_request(client, server, stage, image)
                        for c in levels:
                            cell = cells.setdefault((name, stage, c), Cell(name, stage, c))
                            measure(client, server, cell, image, args.requests, expected, pid)
                    print(f"# round {round_ + 1}/{args.rounds}: {name} done", flush=True)
    return list(cells.values())


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(cells: list[Cell]) -> None:
    row = "{:<16} {:<15} {:>5} {:>5} {:>9} {:>9} {:>8} {:>7} {:>7} {:>6}  {}"
    heads = ("server", "stage", "conc", "n", "p50 ms", "p95 ms", "req/s", "cpu ms", "batch")
    print(row.format(*heads, "errors", "runtime"))
    for cell in cells:
        f = cell.figures()
        print(
            row.format(
                cell.server,
                cell.stage,
                cell.concurrency,
                f["n"],
                _fmt(f["p50_ms"]),
                _fmt(f["p95_ms"]),
                _fmt(f["throughput_rps"]),
                _fmt(f["server_cpu_ms_per_request"]),
                _fmt(f["mean_batch_size"], 2),
                f["errors"],
                ",".join(sorted(cell.runtimes)) or "-",
            )
        )


def targets(cells: list[Cell]) -> dict[str, dict[str, Any]]:
    """Per stage: breastdx against the best peer (throughput at the highest level, p50 at the
    lowest), and the batching gain at the highest level."""
    out: dict[str, dict[str, Any]] = {}
    by = {(c.server, c.stage, c.concurrency): c for c in cells}
    for stage in dict.fromkeys(c.stage for c in cells):
        levels = sorted({c.concurrency for c in cells if c.stage == stage})
        low, high = levels[0], levels[-1]
        own = {n: by[(n, stage, high)] for n, _, c in by if n.startswith("breastdx") and c == high}
        peers = [by[(n, stage, high)] for n, s, c in by if s == stage and c == high]
        peers = [p for p in peers if not p.server.startswith("breastdx") and p.throughput]
        figures: dict[str, Any] = {"low": low, "high": high}
        base = by.get(("breastdx", stage, high))
        if peers and base is not None and base.throughput:
            best = max(peers, key=lambda p: p.throughput or 0.0)
            best_low = by[(best.server, stage, low)]
            base_low = by[("breastdx", stage, low)]
            figures |= {
                "best_peer": best.server,
                "throughput_ratio": base.throughput / (best.throughput or np.nan),
                "p50_ratio_low": (base_low.p_ms(50) or np.nan) / (best_low.p_ms(50) or np.nan),
            }
            fastest = min(
                (by[(p.server, stage, low)] for p in peers), key=lambda c: c.p_ms(50) or np.inf
            )
            figures["fastest_peer_low"] = fastest.server
            figures["p50_ratio_low_vs_fastest"] = (base_low.p_ms(50) or np.nan) / (
                fastest.p_ms(50) or np.nan
            )
        batch = own.get("breastdx-batch")
        if batch is not None and base is not None and base.throughput and batch.throughput:
            figures["batching_gain"] = batch.throughput / base.throughput
            figures["batching_mean_batch_size"] = batch.figures()["mean_batch_size"]
            threads = own.get("breastdx-threads")
            if threads is not None and threads.throughput:
                figures["batching_gain_same_threads"] = batch.throughput / threads.throughput
        out[stage] = figures
    return out


def print_targets(found: dict[str, dict[str, Any]]) -> None:
    for stage, f in found.items():
        if "best_peer" in f:
            print(
                f"\n# {stage}: breastdx / best peer ({f['best_peer']}) throughput at concurrency "
                f"{f['high']}: {f['throughput_ratio']:.2f}x (target >= 1.00); p50 at concurrency "
                f"{f['low']}: {f['p50_ratio_low']:.2f}x of {f['best_peer']}'s, "
                f"{f['p50_ratio_low_vs_fastest']:.2f}x of the fastest ({f['fastest_peer_low']}) "
                "(target <= 1.10)"
            )
        if "batching_gain" in f:
            print(
                f"# {stage}: micro-batching forced on ({BATCH_WINDOW_MS} ms, max {BATCH_MAX}) at "
                f"concurrency {f['high']}: {f['batching_gain']:.2f}x the throughput, mean batch "
                f"{f['batching_mean_batch_size']:.2f} images"
                + (
                    f"; {f['batching_gain_same_threads']:.2f}x against {BATCH_MAX} job threads "
                    "without batching"
                    if "batching_gain_same_threads" in f
                    else ""
                )
            )


def machine() -> dict[str, Any]:
    names = [
        ln.split(":", 1)[1].strip()
        for ln in Path("/proc/cpuinfo").read_text().splitlines()
        if ln.startswith("model name")
    ]
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": names[0] if names else platform.machine(),
        "logical_cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(),
        "packages": versions,
    }


def _finite(value: Any) -> Any:
    """NaN and infinities as null: JSON has neither."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, default=SHIPPED, help="model store")
    parser.add_argument("--stages", default="ultrasound")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--requests", type=int, default=60, help="per server, stage and level")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=2, help="analyses at a time per server")
    parser.add_argument("--json", type=Path, help="write every figure of the run here")
    args = parser.parse_args(argv)
    unknown = [s for s in args.servers.split(",") if s not in SERVERS]
    if unknown:
        parser.error(f"unknown server(s) {unknown}; valid: {', '.join(SERVERS)}")
    if "bentoml" in args.servers.split(",") and shutil.which("bentoml") is None:
        bentoml = Path(sys.executable).parent / "bentoml"
        if not bentoml.exists():
            parser.error("bentoml is not installed here: run scripts/setup-bench-env.sh")
    about = machine()
    print(f"# {about['cpu']}; {about['logical_cpus']} logical CPUs; load {about['load_average']}")
    print(f"# packages {about['packages']}")
    print(
        f"# {args.requests} requests per cell, {args.rounds} round(s), {args.parallel} analyses "
        f"at a time per server, {args.warmup} warm-up requests"
    )
    cells = run(args)
    print()
    print_table(cells)
    found = targets(cells)
    print_targets(found)
    if args.json:
        report = {
            "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
            "machine": about,
            "settings": {k: str(v) for k, v in vars(args).items()},
            "cells": [c.figures() for c in cells],
            "targets": found,
        }
        args.json.write_text(json.dumps(_finite(report), indent=2, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
