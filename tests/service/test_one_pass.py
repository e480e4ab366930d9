"""One pass per request (issue 16): in process, what the submission check made is what the job
analyses: each image is decoded and its display image built once, the model is pinned once."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

import service.inference.pipeline as pipeline
from imaging.record import DecodedImage
from models_registry.card import ModelCard, Stage
from models_registry.registry import Registry
from service.app import create_app
from service.config import Settings
from service.inference import check_input, pin_model
from service.jobs.execute import Attempt
from service.jobs.inprocess import InProcessExecutor
from service.jobs.preflight import CheckedRequest, check_inputs
from tests.service import jobs_support as js


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return js.build_store(tmp_path_factory.mktemp("one-pass"))


class Calls:
    """Counts the calls of a function while it still does its work (a spy, not a stand-in)."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function, self.count = function, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        return self.function(*args, **kwargs)


@pytest.fixture
def client(store: Path) -> Iterator[TestClient]:
    settings = Settings(model_store=store, allow_anonymous=True, hook_modules=[])
    with TestClient(create_app(settings)) as client:
        yield client


def test_an_in_process_request_decodes_and_pins_once(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    displays = Calls(DecodedImage.display)
    pins = Calls(pipeline.pin_model)
    monkeypatch.setattr(DecodedImage, "display", lambda self, i=0: displays(self, i))
    monkeypatch.setattr(pipeline, "pin_model", pins)
    images = [js.ultrasound_png(seed) for seed in range(3)]
    response = client.post(
        "/v1/ultrasound/analyses",
        files=[("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)],
        headers={"Prefer": "wait=30"},
    )
    assert response.status_code == 200 and response.json()["state"] == "succeeded"
    assert displays.count == len(images)  # the submission check's, reused by the job
    assert pins.count == 0  # the job ran on the card the submission pinned


def test_the_job_analyses_the_checked_images_as_the_pipeline_would(store: Path) -> None:
    """The carried check gives the results a fresh analysis gives, decode time included."""
    registry = Registry([store])
    card = pin_model(Stage.ULTRASOUND, registry)
    data = [js.ultrasound_png(seed) for seed in range(2)]
    checked = check_inputs(Stage.ULTRASOUND, card, data, 10**8)
    carried = pipeline.analyse(Stage.ULTRASOUND, checked.inputs, registry=registry, model_ref=card)
    fresh = pipeline.analyse(Stage.ULTRASOUND, data, registry=registry)
    for a, b, one in zip(carried, fresh, checked.inputs, strict=True):
        assert a.result.timings_ms.decode == one.decode_ms
        assert a.result.model_dump(exclude={"timings_ms"}) == b.result.model_dump(
            exclude={"timings_ms"}
        )
        assert np.array_equal(a.mask, b.mask)


def test_a_queue_submission_keeps_no_images(store: Path) -> None:
    registry = Registry([store])
    card = pin_model(Stage.ULTRASOUND, registry)
    checked = check_inputs(Stage.ULTRASOUND, card, [js.ultrasound_png(1)], 10**8, keep=False)
    assert checked.card is card and checked.inputs == ()


def test_the_executor_carries_checked_images_within_its_memory_limit(store: Path) -> None:
    """Memory stays bounded: a job whose images would take the carried bytes past
    ``inprocess_carry_mb`` carries its card alone (its attempt checks the stored bytes again);
    a finished job frees its bytes."""
    registry = Registry([store])
    card = pin_model(Stage.ULTRASOUND, registry)
    policy = card.preprocess_config().frame_policy
    one = check_input(Stage.ULTRASOUND, js.ultrasound_png(1, shape=(300, 320)), policy, 10**8)
    seen: dict[str, CheckedRequest | None] = {}
    release = threading.Event()

    def run(job_id: str, attempt: Attempt, checked: CheckedRequest | None) -> None:
        seen[job_id] = checked
        release.wait(30)

    size = one.decoded.raw.nbytes + one.display.nbytes
    limit_mb = -(-2 * size // (1 << 20))  # room for two of these images, not three
    assert 2 * size <= limit_mb << 20 < 3 * size
    settings = Settings(
        model_store=store, inprocess_workers=1, inprocess_max_pending=8, inprocess_carry_mb=limit_mb
    )
    executor = InProcessExecutor(settings, run)
    try:
        for i in range(4):
            executor.reserve()
            executor.submit(f"job-{i}", CheckedRequest(card, (one,)))
        release.set()
        js.wait_until(lambda: len(seen) == 4 and executor._carrying == 0, 30)
        executor.reserve()
        executor.submit("job-4", CheckedRequest(card, (one,)))
        js.wait_until(lambda: len(seen) == 5, 30)
    finally:
        executor.shutdown()
    carried = {job: value.inputs if value else None for job, value in seen.items()}
    assert carried == {
        "job-0": (one,),
        "job-1": (one,),
        "job-2": (),
        "job-3": (),
        "job-4": (one,),
    }
    assert all(isinstance(value.card, ModelCard) for value in seen.values() if value)
