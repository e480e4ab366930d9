"""Micro-batching across requests (``service.inference.batching``), with the window forced on
on the CPU: real ONNX Runtime sessions on the tiny test models, real threads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

from breastdx.errors import BreastdxError
from imaging.errors import ImagingError
from models_registry.registry import Registry
from models_registry.store import DirectoryStore
from service.app import create_app
from service.config import Settings
from service.inference import Analysis, analyse_each, clear_runners, get_runner
from service.inference.batching import (
    AUTO_WINDOW_MS,
    Batched,
    BatchPolicy,
    MicroBatcher,
    batchers,
    clear_batchers,
    run_model,
)
from service.inference.runner import CPU_PROVIDER
from service.jobs.execute import batch_policy, job_threads
from tests.service import jobs_support as js

T = TypeVar("T")
WINDOW_MS = 200.0  # wide: every thread of a test arrives within it, even on a loaded machine


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return js.build_store(tmp_path_factory.mktemp("batching"))


@pytest.fixture
def registry(store: Path) -> Iterator[Registry]:
    yield Registry([DirectoryStore(store)])
    clear_batchers()
    clear_runners()


def all_at_once(count: int, work: Callable[[int], T]) -> list[T]:
    """``work(i)`` for ``i < count`` on ``count`` threads released together."""
    barrier = threading.Barrier(count)

    def started(i: int) -> T:
        barrier.wait(timeout=30)
        return work(i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(started, range(count)))


def image_batch(seed: int, rows: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, 1, js.SIZE, js.SIZE), np.float32)


def test_concurrent_runs_merge_into_fewer_model_calls_with_the_same_outputs(
    registry: Registry,
) -> None:
    runner = get_runner("us-tiny", registry)
    policy = BatchPolicy(window_ms=WINDOW_MS, max_batch=8)
    batches = [image_batch(i) for i in range(8)]
    got = all_at_once(8, lambda i: run_model(runner, batches[i], 64, policy))
    batcher = batchers()[runner.ref]
    assert sum(batcher.sizes.values()) < 8  # fewer model calls than requests
    assert sum(size * n for size, n in batcher.sizes.items()) == 8  # every row ran once
    assert max(batcher.sizes) > 1
    for batch, batched in zip(batches, got, strict=True):
        alone = runner.run(batch)
        assert set(batched.outputs) == set(alone)
        for name, value in alone.items():
            np.testing.assert_allclose(batched.outputs[name], value, rtol=1e-5, atol=1e-6)


def test_a_merged_run_holds_at_most_max_batch_rows_and_never_splits_a_call(
    registry: Registry,
) -> None:
    runner = get_runner("us-tiny", registry)
    policy = BatchPolicy(window_ms=WINDOW_MS, max_batch=4)
    rows = [1, 2, 3, 1, 2, 1, 3, 2, 1, 4]  # the 4-row call runs alone, at once
    batches = [image_batch(i, n) for i, n in enumerate(rows)]
    got = all_at_once(len(rows), lambda i: run_model(runner, batches[i], 64, policy))
    batcher = batchers()[runner.ref]
    assert max(batcher.sizes) <= 4
    assert sum(size * n for size, n in batcher.sizes.items()) == sum(rows)
    for batch, batched in zip(batches, got, strict=True):
        assert batched.rows <= 4 and len(batched.outputs["mask_logits"]) == len(batch)
        np.testing.assert_allclose(
            batched.outputs["mask_logits"], runner.run(batch)["mask_logits"], atol=1e-6
        )


def test_the_window_is_off_on_the_cpu_unless_set(registry: Registry) -> None:
    runner = get_runner("us-tiny", registry)
    assert runner.providers[0] == CPU_PROVIDER
    assert BatchPolicy().window_for(runner) == 0.0
    assert BatchPolicy(window_ms=3.0).window_for(runner) == 3.0
    alone = run_model(runner, image_batch(0), 64, BatchPolicy())
    assert alone.calls == 1 and alone.rows == 1
    assert runner.ref not in batchers()  # no batcher made
    assert 0 < AUTO_WINDOW_MS <= 10
    threads = job_threads(Settings(batch_window_ms=5, max_batch=12, inprocess_workers=2))
    assert threads == 12  # a merged run holds only jobs that run at the same time
    assert job_threads(Settings(inprocess_workers=3)) == 3
    one_lane = Settings(redis_url=js.TEST_REDIS_URL, worker_lanes=1)  # one job at a time
    assert batch_policy(one_lane).window_ms == 0.0
    assert batch_policy(Settings(redis_url=js.TEST_REDIS_URL)).window_ms is None  # two lanes
    assert batch_policy(Settings()).window_ms is None  # in process: by the device
    assert batch_policy(Settings(redis_url=js.TEST_REDIS_URL, batch_window_ms=2)).window_ms == 2


@pytest.mark.parametrize("bad", [{"window_ms": -1.0}, {"window_ms": 5000.0}, {"max_batch": 0}])
def test_policy_refuses_values_out_of_range(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        BatchPolicy(**bad)


def fixed_batch_session(tmp_path: Path) -> ort.InferenceSession:
    """A model whose batch dimension is fixed at 1: ``y = 2 x``, ``x`` of shape (1, 4)."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "fixed-batch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path = tmp_path / "fixed.onnx"
    path.write_bytes(model.SerializeToString())
    return ort.InferenceSession(str(path), providers=[CPU_PROVIDER])


def test_a_failing_call_fails_alone_and_a_failed_merge_is_run_call_by_call(
    tmp_path: Path,
) -> None:
    session = fixed_batch_session(tmp_path)
    model_calls: list[int] = []

    def run(batch: np.ndarray, max_batch: int) -> dict[str, np.ndarray]:
        model_calls.append(len(batch))
        return {"y": session.run(["y"], {"x": batch})[0]}

    batcher = MicroBatcher(run, WINDOW_MS, max_batch=8)
    rows = [1, 1, 2, 1, 1]  # merged: 6 rows, refused by the model; alone: the 2-row call fails
    batches = [np.full((n, 4), i, np.float32) for i, n in enumerate(rows)]

    def call(i: int) -> Batched | Exception:
        try:
            return batcher.run(batches[i])
        except Exception as exc:
            return exc

    try:
        got = all_at_once(len(rows), call)
    finally:
        batcher.close()
    assert model_calls[0] > 2  # the merged run came first
    assert isinstance(got[2], Exception) and "dimension" in str(got[2]).lower()
    for i in (0, 1, 3, 4):
        result = got[i]
        assert isinstance(result, Batched), result
        np.testing.assert_array_equal(result.outputs["y"], 2 * batches[i])


def test_concurrent_requests_share_model_runs_with_results_equal_to_unbatched(
    registry: Registry,
) -> None:
    images = [js.ultrasound_png(seed) for seed in range(6)]
    alone = [analyse_each("ultrasound", [image], registry=registry)[0] for image in images]
    policy = BatchPolicy(window_ms=WINDOW_MS, max_batch=16)
    batched = all_at_once(
        6, lambda i: analyse_each("ultrasound", [images[i]], registry=registry, batching=policy)[0]
    )
    sizes = []
    for one, merged in zip(alone, batched, strict=True):
        assert isinstance(one, Analysis) and isinstance(merged, Analysis)
        assert one.result.batch_size == 1
        sizes.append(merged.result.batch_size)
        plain = one.result.model_dump(exclude={"timings_ms", "batch_size"})
        assert merged.result.model_dump(exclude={"timings_ms", "batch_size"}) == plain
        np.testing.assert_array_equal(merged.mask, one.mask)
    assert max(sizes) > 1  # images of several requests ran in one model call


def test_a_bad_image_fails_only_its_own_request_in_a_merged_batch(registry: Registry) -> None:
    policy = BatchPolicy(window_ms=WINDOW_MS, max_batch=16)
    inputs = [[js.ultrasound_png(1)], [b"\x89PNG not really"], [js.ultrasound_png(2)]]
    inputs.append([js.ultrasound_png(3), b"GIF89a", js.ultrasound_png(4)])  # one bad of three
    got = all_at_once(
        4, lambda i: analyse_each("ultrasound", inputs[i], registry=registry, batching=policy)
    )
    assert isinstance(got[1][0], ImagingError)
    assert isinstance(got[3][1], BreastdxError)
    good = [got[0][0], got[2][0], got[3][0], got[3][2]]
    assert all(isinstance(a, Analysis) for a in good)
    assert max(a.result.batch_size for a in good if isinstance(a, Analysis)) > 1


def test_the_api_in_process_merges_concurrent_requests(store: Path) -> None:
    settings = Settings(
        model_store=store, allow_anonymous=True, batch_window_ms=WINDOW_MS, max_batch=8
    )
    images = [js.ultrasound_png(seed) for seed in range(8)]
    try:
        with TestClient(create_app(settings)) as client:

            def post(i: int) -> dict[str, Any]:
                response = client.post(
                    "/v1/ultrasound/analyses",
                    files=[("file", ("scan.png", images[i], "image/png"))],
                    headers={"Prefer": "wait=30"},
                )
                assert response.status_code == 200, response.text
                body: dict[str, Any] = response.json()
                return body

            bodies = all_at_once(8, post)
    finally:
        clear_batchers()
        clear_runners()
    assert {b["state"] for b in bodies} == {"succeeded"}
    assert max(b["result"][0]["batch_size"] for b in bodies) > 1
