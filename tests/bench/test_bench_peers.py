"""Smoke test of ``bench/bench_peers.py``: every server answers a few real requests.

Runs in the bench environment only (``.venv-bench``, made by ``scripts/setup-bench-env.sh`` or
``make bench-peers``; the peers are never installed into the product's venvs), on the tiny test
models so that it takes seconds of model time.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.service import jobs_support as js

BENCH_PYTHON = REPO_ROOT / ".venv-bench" / "bin" / "python"
SERVERS = ("breastdx", "breastdx-batch", "litserve", "bentoml")


@pytest.mark.slow
@pytest.mark.timeout(1200)  # four servers start one after the other; minutes on a loaded machine
@pytest.mark.skipif(
    not BENCH_PYTHON.exists(),
    reason="no bench environment (.venv-bench): scripts/setup-bench-env.sh or make bench-peers "
    "makes it; the serving peers are kept out of the product's venvs",
)
def test_bench_peers_measures_every_server(tmp_path: Path) -> None:
    store = js.build_store(tmp_path)
    report = tmp_path / "peers.json"
    command = [
        str(BENCH_PYTHON),
        "bench/bench_peers.py",
        "--store",
        str(store),
        "--servers",
        ",".join(SERVERS),
        "--requests",
        "3",
        "--concurrency",
        "1,4",
        "--warmup",
        "1",
        "--json",
        str(report),
    ]
    done = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1100, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(report.read_text(encoding="utf-8"))
    cells = {(c["server"], c["concurrency"]): c for c in figures["cells"]}
    assert set(cells) == {(server, c) for server in SERVERS for c in (1, 4)}
    for cell in cells.values():
        assert cell["n"] == 3 and cell["errors"] == 0, cell  # every answer agreed with breastdx
        assert 0 < cell["p50_ms"] <= cell["p95_ms"] and cell["throughput_rps"] > 0
        assert cell["server_cpu_ms_per_request"] >= 0  # clock ticks of 10 ms: may read 0
    assert any(cell["server_cpu_ms_per_request"] > 0 for cell in cells.values())
    for cell in cells.values():  # every answer names the runtime it was checked against
        assert sum(cell["runtimes"].values()) == 3
        assert set(cell["runtimes"]) <= {"onnxruntime", "openvino"}
    assert cells[("breastdx", 1)]["mean_batch_size"] == 1.0
    ultrasound = figures["targets"]["ultrasound"]
    assert ultrasound["best_peer"] in {"litserve", "bentoml"}
    assert ultrasound["throughput_ratio"] > 0 and ultrasound["batching_gain"] > 0
    assert "breastdx / best peer" in done.stdout
