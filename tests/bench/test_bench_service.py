"""Smoke test of ``bench/bench_service.py``: one short run, in process and queued, on the tiny
test models; every figure the issue names is in its ``--json`` and holds together."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.service import jobs_support as js


@pytest.mark.slow
@pytest.mark.timeout(900)  # two server sets start one after the other; minutes when loaded
def test_bench_service_writes_every_figure(tmp_path: Path) -> None:
    store = js.build_store(tmp_path)
    report = tmp_path / "service.json"
    command = [sys.executable, "bench/bench_service.py", "--store", str(store), "--stages",
               "ultrasound", "--requests", "4", "--concurrency", "1,16", "--runtimes",
               "onnxruntime,openvino", "--bare-requests", "8", "--load-requests", "6", "--json",
               str(report)]  # fmt: skip
    done = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=800, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(report.read_text(encoding="utf-8"))
    us = figures["stages"]["ultrasound"]
    assert us["model"] == "us-tiny@1"
    assert set(us["model_ms"]) == {"onnxruntime_cpu", "onnxruntime", "openvino"}
    assert us["speedup_vs_onnxruntime_cpu"]["onnxruntime_cpu"] == 1.0
    assert us["served_runtime"] in {"onnxruntime", "openvino"}
    levels = {(lv["mode"], lv["concurrency"]): lv for lv in figures["levels"]}
    assert set(levels) == {(m, c) for m in ("inprocess", "queued") for c in (1, 16)}
    # concurrency 1 gets --requests, higher levels --load-requests (throughput over more images)
    assert all(lv["errors"] == 0 for lv in levels.values())
    assert {key: lv["n"] for key, lv in levels.items()} == {
        ("inprocess", 1): 4,
        ("queued", 1): 4,
        ("inprocess", 16): 6,
        ("queued", 16): 6,
    }
    local = levels[("inprocess", 1)]["p50_ms"]
    assert math.isclose(us["overhead_ms"], local - us["served_model_ms"], rel_tol=1e-9)
    # the requests' own inference time is inside their e2e time
    assert 0 < us["overhead_vs_own_inference_ms"] < local
    # an upload of the image's size that is no image: refused (415) with no job, so below the
    # analysed requests' time (NaN, written as null, unless every one was a 415)
    assert 0 < us["refused_upload_ms"] < local
    assert "refused after parsing (415, no job)" in done.stdout
    # the bare pipeline ran before and after the service's cells; the ratios use their mean
    runs = us["bare_pipeline_rps_c16_runs"]
    assert len(runs) == 2 and all(r > 0 for r in runs)
    assert math.isclose(us["bare_pipeline_rps_c16"], sum(runs) / 2, rel_tol=1e-9)
    ratios = us["throughput_vs_bare_c16"]
    assert set(ratios) == {"inprocess", "queued"}
    for mode, ratio in ratios.items():
        rps = levels[(mode, 16)]["throughput_rps"]
        assert math.isclose(ratio, rps / us["bare_pipeline_rps_c16"], rel_tol=1e-9)
    # CPU per request of each serving process, and the bare pipeline's per image
    cpu = {key: lv["process_cpu_ms_per_request"] for key, lv in levels.items()}
    assert set(cpu[("inprocess", 16)]) == {"server"}
    assert set(cpu[("queued", 16)]) == {"server", "worker", "redis"}
    assert cpu[("queued", 16)]["worker"] > 0 and cpu[("inprocess", 16)]["server"] > 0
    assert len(us["bare_pipeline_cpu_ms_per_image"]) == 2
    assert all(ms > 0 for ms in us["bare_pipeline_cpu_ms_per_image"])
    assert figures["client"] == "stdlib"  # bench/loadclient.py, the lean default
    assert all(lv["client_cpu_ms_per_request"] > 0 for lv in levels.values())
    assert figures["soak"] is None  # --soak 0, the default, skips it
    assert figures["requests_per_cell"] == 4 and figures["bare_requests"] == 8
    assert figures["load_requests"] == 6


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bench_service_sends_several_images_a_request(tmp_path: Path) -> None:
    """``--files-per-request 3``: every request carries three images and gets three results (a
    request short of them counts as an error), and the share compares images/s."""
    store = js.build_store(tmp_path)
    report = tmp_path / "files.json"
    command = [sys.executable, "bench/bench_service.py", "--store", str(store), "--stages",
               "histopathology", "--modes", "inprocess", "--requests", "3", "--concurrency",
               "1,16", "--runtimes", "onnxruntime", "--bare-requests", "8", "--load-requests",
               "6", "--files-per-request", "3", "--json", str(report)]  # fmt: skip
    done = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=500, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(report.read_text(encoding="utf-8"))
    assert figures["files_per_request"] == 3
    levels = {lv["concurrency"]: lv for lv in figures["levels"]}
    assert all(lv["errors"] == 0 and lv["files_per_request"] == 3 for lv in levels.values())
    top = levels[16]
    assert math.isclose(top["images_per_s"], 3 * top["throughput_rps"], rel_tol=1e-9)
    histo = figures["stages"]["histopathology"]
    share = top["images_per_s"] / histo["bare_pipeline_rps_c16"]
    assert math.isclose(histo["throughput_vs_bare_c16"]["inprocess"], share, rel_tol=1e-9)


def test_bench_service_without_modes_measures_the_model_and_the_bare_pipeline(
    tmp_path: Path,
) -> None:
    """``--modes ""``: no server starts; the model-only times and the bare pipeline's
    throughput (over at least 500 images unless ``--bare-requests`` says otherwise) remain."""
    store = js.build_store(tmp_path)
    report = tmp_path / "bare.json"
    command = [sys.executable, "bench/bench_service.py", "--store", str(store), "--stages",
               "histopathology", "--modes", "", "--runtimes", "onnxruntime", "--json",
               str(report)]  # fmt: skip
    done = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(report.read_text(encoding="utf-8"))
    assert figures["levels"] == [] and figures["bare_requests"] == 500
    assert figures["load_requests"] == 500  # higher levels default to the bare pipeline's count
    histo = figures["stages"]["histopathology"]
    assert histo["bare_pipeline_rps_c16"] > 0 and histo["throughput_vs_bare_c16"] == {}
    assert len(histo["bare_pipeline_rps_c16_runs"]) == 1  # no service cells to bracket


def test_bench_variants_times_every_runtime_the_card_allows(tmp_path: Path) -> None:
    store = js.build_store(tmp_path)
    command = [sys.executable, "bench/bench_variants.py", "--store", str(store), "--model",
               "idc-tiny", "--batch", "4", "--seconds", "0.2"]  # fmt: skip
    done = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("# idc-tiny@1: input (4, 3, 32, 32)")
    timed = {line.split()[0]: line for line in lines[1:]}
    assert set(timed) == {"onnxruntime", "openvino"}  # no reduced-precision entry on the card
    assert " 1.00x  (model.onnx, CPUExecutionProvider" in timed["onnxruntime"]


def test_bench_variants_answers_bad_input_with_a_message(tmp_path: Path) -> None:
    store = js.build_store(tmp_path)
    base = [sys.executable, "bench/bench_variants.py", "--store", str(store)]
    cases = {
        ("--model", "no-such-model"): (1, "bench_variants: unknown_model: unknown model"),
        ("--model", "idc-tiny", "--batch", "0"): (2, "--batch: must be at least 1, got 0"),
    }
    for args, (code, message) in cases.items():
        done = subprocess.run(
            [*base, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == code and message in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr


def test_bench_service_answers_a_bad_request_count_with_a_message() -> None:
    for flag in ("--bare-requests", "--load-requests", "--requests"):
        for bad in ("0", "-3", "many"):
            done = subprocess.run(
                [sys.executable, "bench/bench_service.py", flag, bad],
                cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert done.returncode == 2, done.stderr[-2000:]
            assert f"{flag}: must be" in done.stderr and "Traceback" not in done.stderr
