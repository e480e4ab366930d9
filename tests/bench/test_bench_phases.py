"""``bench/bench_phases.py``: the in-process pipeline's phase medians, on the tiny test models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from tests.conftest import REPO_ROOT
from tests.service import jobs_support as js

PHASES = {"decode", "preprocess", "inference", "postprocess", "total"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "bench/bench_phases.py", *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_bench_phases_prints_and_writes_each_phase(tmp_path: Path) -> None:
    store = js.build_store(tmp_path)
    grey, rgb = tmp_path / "grey.png", tmp_path / "rgb.png"
    grey.write_bytes(js.ultrasound_png(1))
    frame = cv2.imdecode(np.frombuffer(js.ultrasound_png(2), np.uint8), cv2.IMREAD_GRAYSCALE)
    rgb.write_bytes(cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))[1].tobytes())
    report = tmp_path / "phases.json"
    args = ["--stage", "ultrasound", str(grey), str(rgb), "--store", str(store), "--runs", "3"]
    done = run(*args, "--runtime", "onnxruntime", "--json", str(report))
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(report.read_text(encoding="utf-8"))
    assert list(figures) == [str(grey), str(rgb)]
    for image in figures.values():
        assert image["served"] == "us-tiny@1 on onnxruntime"
        medians = image["median_ms"]
        assert set(medians) == PHASES and all(medians[p] > 0 for p in PHASES)
        parts = sum(medians[p] for p in PHASES - {"total"})
        assert abs(parts - medians["total"]) <= 0.25 * medians["total"]  # medians of a sum
    assert "grey.png" in done.stdout and "us-tiny@1 on onnxruntime" in done.stdout


def test_bench_phases_names_an_image_it_cannot_analyse(tmp_path: Path) -> None:
    store = js.build_store(tmp_path)
    missing = tmp_path / "absent.png"
    done = run("--stage", "ultrasound", str(missing), "--store", str(store), "--runs", "1")
    assert done.returncode == 2 and str(missing) in done.stderr and "Traceback" not in done.stderr


def test_bench_phases_refuses_an_unknown_runtime_by_name(tmp_path: Path) -> None:
    image = tmp_path / "grey.png"
    image.write_bytes(js.ultrasound_png(1))
    done = run("--stage", "ultrasound", str(image), "--runtime", "tensorrt", "--runs", "1")
    assert done.returncode == 2 and "invalid choice: 'tensorrt'" in done.stderr
    assert "Traceback" not in done.stderr
