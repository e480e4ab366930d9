"""Shared by the API, job, worker and security tests: tiny ONNX models for every stage (built
with the onnx helper API, no torch), a store with them registered, test images, Redis helpers.

Models (``production`` alias each): ``mg-tiny`` and ``us-tiny`` segment (mask = the image,
malignancy = sigmoid(2 * mean + 0.25)), ``idc-tiny`` classifies 50 px H&E patches. Extra
versions without an alias: ``mg-slow`` (a ``Loop`` of ``SLOW_ITERATIONS`` no-op steps before
the malignancy head, a few seconds per image) and ``mg-flaky`` (``mg-tiny``'s graph, used to
hide its file for a transient failure).
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import redis
from onnx import TensorProto, helper, numpy_helper

from models_registry.registry import Registry
from models_registry.store import DirectoryStore
from tests.cards import segmentation_io
from tests.conftest import REPO_ROOT
from tests.imaging import dicom_factory as dcm

TEST_REDIS_URL = os.environ.get("BREASTDX_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
SIZE = 32
SLOW_ITERATIONS = 2_500_000  # ~3 s on the 2-core CI machine, > 1 s on fast ones


def _tensor(name: str, elem: int, shape: list[Any]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _slow_loop(iterations: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes adding ``Loop(iterations) { v + 0 }`` (a zero) to ``pooled`` -> ``pooled_slow``."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["v_in", "zero"], ["v_out"]),
        ],
        "body",
        [
            _tensor("i", TensorProto.INT64, []),
            _tensor("cond_in", TensorProto.BOOL, []),
            _tensor("v_in", TensorProto.FLOAT, ["N", 1, 1, 1]),
        ],
        [
            _tensor("cond_out", TensorProto.BOOL, []),
            _tensor("v_out", TensorProto.FLOAT, ["N", 1, 1, 1]),
        ],
        [numpy_helper.from_array(np.zeros(1, np.float32), "zero")],
    )
    nodes = [
        helper.make_node("Mul", ["pooled", "zero_f"], ["v0"]),  # depends on the input: no folding
        helper.make_node("Loop", ["trip", "cond", "v0"], ["v_final"], body=body),
        helper.make_node("Add", ["pooled", "v_final"], ["pooled_slow"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(iterations, np.int64), "trip"),
        numpy_helper.from_array(np.array(True), "cond"),
        numpy_helper.from_array(np.zeros(1, np.float32), "zero_f"),
    ]
    return nodes, inits


def segmentation_onnx(path: Path, *, slow: int = 0) -> Path:
    """``image`` (N, 1, 32, 32) -> ``mask_logits`` (= image), ``malignancy_logit`` (N, 1)."""
    kernel = np.zeros((1, 1, 3, 3), np.float32)  # (C_out, C_in, kH, kW): identity
    kernel[0, 0, 1, 1] = 1
    inits = [
        numpy_helper.from_array(kernel, "conv_w"),
        numpy_helper.from_array(np.zeros(1, np.float32), "conv_b"),
        numpy_helper.from_array(np.full((1, 1), 2, np.float32), "fc_w"),
        numpy_helper.from_array(np.full(1, 0.25, np.float32), "fc_b"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "flat_shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["mask_logits"], pads=[1] * 4),
        helper.make_node("ReduceMean", ["image"], ["pooled"], axes=[1, 2, 3], keepdims=1),
    ]
    pooled = "pooled"
    if slow:
        loop_nodes, loop_inits = _slow_loop(slow)
        nodes, inits, pooled = nodes + loop_nodes, inits + loop_inits, "pooled_slow"
    nodes += [
        helper.make_node("Reshape", [pooled, "flat_shape"], ["flat"]),  # (N, 1)
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["malignancy_logit"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-seg",
        [_tensor("image", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
        [
            _tensor("mask_logits", TensorProto.FLOAT, ["N", 1, SIZE, SIZE]),
            _tensor("malignancy_logit", TensorProto.FLOAT, ["N", 1]),
        ],
        inits,
    )
    return _save(graph, path)


def classifier_onnx(path: Path) -> Path:
    """``image`` (N, 3, 32, 32) -> ``class_logits`` (N, 2) from the channel means."""
    weights = np.array([[0.5, -0.5], [-1.0, 1.0], [0.5, -0.5]], np.float32)  # (3, 2)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["pooled"], axes=[2, 3], keepdims=0),
            helper.make_node("Gemm", ["pooled", "fc_w", "fc_b"], ["class_logits"]),
        ],
        "tiny-cls",
        [_tensor("image", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [_tensor("class_logits", TensorProto.FLOAT, ["N", 2])],
        [
            numpy_helper.from_array(weights, "fc_w"),
            numpy_helper.from_array(np.zeros(2, np.float32), "fc_b"),
        ],
    )
    return _save(graph, path)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _draft(stage: str, **overrides: Any) -> dict[str, Any]:
    metric = {"name": "dice_fg", "value": 0.5, "n": 10, "dataset": "synthetic", "split": "test"}
    draft: dict[str, Any] = {
        "stage": stage,
        "task": "segmentation",
        "architecture": {"name": "tiny", "parameters": 12},
        **segmentation_io(SIZE),
        "labels": ["benign", "malignant"],
        "thresholds": {"mask": 0.6, "malignancy": 0.5, "min_lesion_area_px": 4},
        "calibration": {"temperature": 1.0},
        "evaluation_sets": [
            {
                "dataset": "synthetic",
                "split": "test",
                "protocol": "leakage_safe",
                "data_root": "generated by the tests",
                "split_file_sha256": "ab" * 32,
                "class_counts": {"benign": 5, "malignant": 5},
            }
        ],
        "metrics": [metric | {"protocol": "leakage_safe"}],
        "training": {
            "config": {},
            "git_commit": "0" * 40,
            "date": "2025-01-01T00:00:00Z",
            "seed": 0,
            "hardware": "none",
            "duration_s": 0.0,
        },
        "provenance": [{"name": "synthetic", "licence": "CC0", "citation": "the test suite"}],
        "parity": {"max_abs_prob_diff": 0.0, "n_images": 1},
        "onnx": {"opset": 17},
    }
    return copy.deepcopy(draft) | overrides


def _classifier_draft() -> dict[str, Any]:
    draft = _draft("histopathology", task="classification", labels=["non_idc", "idc"])
    draft["input"] = {
        "name": "image",
        "channels": 3,
        "size": [SIZE, SIZE],
        "preprocess": {"input_size": [SIZE, SIZE], "channels": 3, "normalisation": "imagenet"},
    }
    draft["outputs"] = [
        {
            "name": "class_logits",
            "role": "class_logits",
            "meaning": "logits over labels",
            "shape": ["N", 2],
            "activation": "softmax",
        }
    ]
    draft["training"]["config"] = {"data": {"dataset": "idc"}}
    return draft


def build_store(root: Path) -> Path:
    """Register every test model under ``root/store``; returns the store folder."""
    store, work = root / "store", root / "onnx"
    work.mkdir(parents=True, exist_ok=True)
    registry = Registry([DirectoryStore(store)])
    seg = segmentation_onnx(work / "seg.onnx")
    registry.register("mg-tiny", seg, _draft("mammography"), alias="production")
    registry.register("us-tiny", seg, _draft("ultrasound"), alias="production")
    cls = classifier_onnx(work / "cls.onnx")
    registry.register("idc-tiny", cls, _classifier_draft(), alias="production")
    registry.register("mg-flaky", seg, _draft("mammography"))
    slow = segmentation_onnx(work / "slow.onnx", slow=SLOW_ITERATIONS)
    registry.register("mg-slow", slow, _draft("mammography"), check_contract=False)
    return store


def build_slow_store(root: Path, iterations: int = SLOW_ITERATIONS // 5) -> Path:
    """A store under ``root/store`` whose only model, ``mg-slow``, serves mammography
    (``production``): a run through it, as the readiness check and the warm-up make, takes a
    fraction of a second or more."""
    store, work = root / "store", root / "onnx"
    work.mkdir(parents=True, exist_ok=True)
    slow = segmentation_onnx(work / "slow.onnx", slow=iterations)
    registry = Registry([DirectoryStore(store)])
    registry.register(
        "mg-slow", slow, _draft("mammography"), alias="production", check_contract=False
    )
    return store


# Images -----------------------------------------------------------------------------------


def png(image: np.ndarray) -> bytes:
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    return bytes(cv2.imencode(".png", pixels)[1])


def mammogram_dicom(rows: int = 160, columns: int = 128) -> bytes:
    return dcm.to_bytes(dcm.mammogram(rows=rows, columns=columns)[0])


def mammogram_png(seed: int = 0, shape: tuple[int, int] = (200, 160)) -> bytes:
    rng = np.random.default_rng(seed)
    image = np.zeros(shape, np.uint8)
    cv2.ellipse(image, (0, shape[0] // 2), (shape[1] - 20, shape[0] // 2 - 10), 0, -90, 90, 170, -1)
    image = cv2.add(image, rng.integers(0, 30, shape, dtype=np.uint8))
    cv2.circle(image, (shape[1] // 3, shape[0] // 2), 12, 255, -1)  # a bright "lesion"
    return png(image)


def ultrasound_png(seed: int = 0, shape: tuple[int, int] = (96, 128)) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(20, 90, shape, dtype=np.uint8)
    cv2.circle(image, (shape[1] // 2, shape[0] // 2), 14, 250, -1)
    return png(image)


def he_patch(seed: int = 0, shape: tuple[int, int] = (50, 50)) -> bytes:
    rng = np.random.default_rng(seed)
    base = np.array([200, 120, 190], np.float32)  # pink-purple H&E tone
    noise = rng.normal(0, 25, (*shape, 3))
    return png(np.clip(base + noise, 0, 255).astype(np.uint8))


def sr_dicom() -> bytes:
    return dcm.to_bytes(dcm.non_image("sr"))


def seg_dicom() -> bytes:
    return dcm.to_bytes(dcm.non_image("seg"))


# Redis and processes ---------------------------------------------------------------------


def redis_or_skip(url: str = TEST_REDIS_URL) -> redis.Redis:
    """The test database (flushed by the caller), or skip where no Redis runs."""
    import pytest

    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {url} (make test starts one)")
    return client


def free_port() -> int:
    """A loopback port with nothing listening (for 'Redis down')."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_env(store: Path, namespace: str, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "BREASTDX_REDIS_URL": TEST_REDIS_URL,
        "BREASTDX_MODEL_STORE": str(store),
        "BREASTDX_NAMESPACE": namespace,
        "BREASTDX_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(REPO_ROOT),
    }
    return env | extra


def start_worker(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    """``breastdx worker`` in its own process group (its RQ scheduler child goes with it)."""
    cmd = [sys.executable, "-m", "breastdx.cli", "worker", *args]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, start_new_session=True)


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """Stop the worker's process group (the worker and its scheduler), by its id."""
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):  # an orphaned scheduler of a killed worker
        os.killpg(proc.pid, 9)


def wait_until(check: Callable[[], Any], timeout_s: float = 30.0, every_s: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(every_s)


def poll_final(client: Any, location: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """The job at ``location`` once it succeeded or failed, long-polled as a client should
    (``Prefer: wait``): one request per few seconds keeps a job that runs long on a loaded
    machine within the API's rate limit (120 requests a minute), where polling every 50 ms
    drew a 429 after 6 s. Any answer but 200 fails at once, with its body."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{location} not final within {timeout_s} s")
        wait = max(1, min(10, int(remaining)))
        response = client.get(location, headers={"Prefer": f"wait={wait}"})
        assert response.status_code == 200, (response.status_code, response.text)
        body: dict[str, Any] = response.json()
        if body["state"] in {"succeeded", "failed"}:
            return body


def ready(client: Any, timeout_s: float = 120.0) -> Any:
    """``/readyz`` of an app started in process, once its start-up warm-up has finished."""

    def answered() -> Any:
        response = client.get("/readyz")
        models = {c["name"]: c for c in response.json()["checks"]}["models"]
        return None if models["detail"].startswith("warming up") else response

    return wait_until(answered, timeout_s, every_s=0.2)


def keys(client: redis.Redis, pattern: str) -> Iterator[str]:
    return (k.decode() for k in client.scan_iter(match=pattern, count=1000))
