"""The /v1 API in process (no Redis): submit, poll, wait, result images, models, problems."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.cli_predict import main as predict_main
from service.config import Settings
from service.inference.render import decode_png
from service.inference.result import AnalysisResult
from service.jobs.backend import get_backend
from tests.service import jobs_support as js

Files = list[tuple[str, tuple[str, bytes, str]]]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return js.build_store(tmp_path_factory.mktemp("api"))


def make_client(store: Path, **overrides: Any) -> TestClient:
    settings = Settings(model_store=store, allow_anonymous=True, **overrides)
    return TestClient(create_app(settings))


@pytest.fixture
def client(store: Path) -> Iterator[TestClient]:
    with make_client(store) as client:
        yield client


def files(*images: bytes, media_type: str = "application/octet-stream") -> Files:
    return [("file", (f"image-{i}", data, media_type)) for i, data in enumerate(images)]


def test_submit_answers_202_then_get_finishes_in_process(client: TestClient) -> None:
    response = client.post("/v1/ultrasound/analyses", files=files(js.ultrasound_png(1)))
    assert response.status_code == 202
    body = response.json()
    assert response.headers["location"] == f"/v1/analyses/{body['id']}"
    assert body["state"] in {"queued", "running", "succeeded"} and body["stage"] == "ultrasound"
    assert body["links"]["self"] == response.headers["location"]
    assert body["model"] == "us-tiny@1" and body["progress"]["total"] == 1
    done = js.poll_final(client, response.headers["location"])
    assert done["state"] == "succeeded" and done["attempts"] == 1
    assert done["progress"] == {"done": 1, "total": 1}
    result = AnalysisResult.model_validate(done["result"][0])
    assert result.model.ref == "us-tiny@1" and result.ai_generated


def test_result_is_what_breastdx_predict_writes(
    client: TestClient, store: Path, tmp_path: Path
) -> None:
    image = tmp_path / "scan.png"
    image.write_bytes(js.mammogram_png(3))
    argv = ["--stage", "mammography", str(image), "--out", str(tmp_path / "out")]
    assert predict_main([*argv, "--store", str(store)]) == 0
    expected = json.loads((tmp_path / "out" / "scan.json").read_text(encoding="utf-8"))
    response = client.post(
        "/v1/mammography/analyses", files=files(image.read_bytes()), headers={"Prefer": "wait=30"}
    )
    job = response.json()
    got = job["result"][0]
    for body in (expected, got):
        body.pop("timings_ms")
    assert got == expected and got["lesions"]
    for kind in ("mask", "overlay"):  # the overlay is drawn on request from the stored display
        served = client.get(f"{job['links'][kind]}?index=0").content
        written = (tmp_path / "out" / f"scan.{kind}.png").read_bytes()
        assert np.array_equal(decode_png(served), decode_png(written)), kind


def test_prefer_wait_answers_200_with_the_finished_job(client: TestClient) -> None:
    response = client.post(
        "/v1/histopathology/analyses",
        files=files(*(js.he_patch(seed) for seed in range(4))),
        headers={"Prefer": "respond-async, wait=30"},
    )
    assert response.status_code == 200
    assert response.headers["preference-applied"] == "wait=30"
    body = response.json()
    assert body["state"] == "succeeded" and len(body["result"]) == 4
    assert {r["batch_size"] for r in body["result"]} == {4}
    assert all(r["histopathology"]["patches"] for r in body["result"])


def test_prefer_wait_is_capped_and_times_out_to_202(store: Path) -> None:
    with make_client(store, max_wait_s=1) as client:
        started = time.monotonic()
        response = client.post(
            "/v1/mammography/analyses?model=mg-slow",
            files=files(js.mammogram_png()),
            headers={"Prefer": "wait=3600"},
        )
        assert time.monotonic() - started < 10
        finished = response.json()["state"] in {"succeeded", "failed"}
        assert response.status_code == (200 if finished else 202)
        assert response.headers["preference-applied"] == "wait=1"
        location = response.headers["location"]
        early = client.get(f"{location}/mask.png")
        if response.json()["state"] != "succeeded":
            assert early.status_code == 409
            assert early.json()["type"] == "urn:breastdx:problem:job_not_finished"
        assert js.poll_final(client, location)["state"] == "succeeded"


def test_mask_and_overlay_png_per_input(client: TestClient) -> None:
    shapes = [(96, 128), (80, 100)]
    images = [js.ultrasound_png(seed, shape) for seed, shape in enumerate(shapes)]
    response = client.post(
        "/v1/ultrasound/analyses", files=files(*images), headers={"Prefer": "wait=30"}
    )
    body = response.json()
    assert body["state"] == "succeeded"
    for index, shape in enumerate(shapes):
        mask = client.get(f"{body['links']['mask']}?index={index}")
        assert mask.status_code == 200 and mask.headers["content-type"] == "image/png"
        pixels = cv2.imdecode(np.frombuffer(mask.content, np.uint8), cv2.IMREAD_UNCHANGED)
        assert pixels.shape == shape and set(np.unique(pixels)) <= {0, 255}
        overlay = client.get(f"{body['links']['overlay']}?index={index}")
        colour = cv2.imdecode(np.frombuffer(overlay.content, np.uint8), cv2.IMREAD_COLOR)
        assert colour.shape == (*shape, 3)
    missing = client.get(f"{body['links']['mask']}?index=2")
    assert missing.status_code == 404
    assert missing.json()["type"] == "urn:breastdx:problem:artefact_not_found"
    assert client.get(f"{body['links']['mask']}?index=-1").status_code == 422


def test_large_histopathology_tile_is_tiled(client: TestClient) -> None:
    tile = js.he_patch(5, (120, 160))
    response = client.post(
        "/v1/histopathology/analyses", files=files(tile), headers={"Prefer": "wait=30"}
    )
    histology = response.json()["result"][0]["histopathology"]
    assert histology["grid"]["window"] == [50, 50] and histology["grid"]["windows"] == 3 * 4


def test_histopathology_heatmap_is_drawn_on_request_as_the_pipeline_draws_it(
    store: Path,
) -> None:
    """A histopathology job stores its display image, not the heatmap; the first GET of
    overlay.png draws it from that image and the result's patches: the pixels of the
    pipeline's own ``Analysis.overlay`` (which ``breastdx predict`` writes), the tissue
    windows painted and the white glass left as it was."""
    from models_registry.registry import Registry
    from service.inference import analyse

    tile = js.he_patch(5, (120, 160))  # PNG bytes: 3 x 4 windows of 50 px, edges padded
    settings = Settings(model_store=store, allow_anonymous=True)
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/v1/histopathology/analyses", files=files(tile), headers={"Prefer": "wait=30"}
        )
        body = response.json()
        assert body["state"] == "succeeded"
        stored = get_backend(settings).store
        assert stored.artefact(body["id"], "overlay", 0) is None  # not drawn yet
        assert stored.artefact(body["id"], "display", 0) is not None
        served = client.get(f"{body['links']['overlay']}?index=0")
        again = client.get(f"{body['links']['overlay']}?index=0")
        assert stored.artefact(body["id"], "overlay", 0) == served.content  # kept
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    pixels = cv2.cvtColor(
        cv2.imdecode(np.frombuffer(served.content, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
    )
    own = analyse("histopathology", [tile], registry=Registry([store]))[0]
    assert own.result.histopathology is not None and own.result.histopathology.patches
    np.testing.assert_array_equal(pixels, own.overlay)
    original = cv2.cvtColor(cv2.imdecode(np.frombuffer(tile, np.uint8), 1), cv2.COLOR_BGR2RGB)
    assert (pixels != original).any(axis=2).mean() > 0.5  # the tissue windows are painted
    assert again.content == served.content


def test_models_lists_each_stage_production_card(client: TestClient) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 200
    models = {m["stage"]: m for m in response.json()["models"]}
    assert {s: m["ref"] for s, m in models.items()} == {
        "mammography": "mg-tiny@1",
        "ultrasound": "us-tiny@1",
        "histopathology": "idc-tiny@1",
    }
    card = models["histopathology"]["card"]
    assert card["input"]["preprocess"]["normalisation"] == "imagenet"
    assert models["ultrasound"]["aliases"] == {"production": 1}


def test_model_query_selects_and_checks_the_model(client: TestClient) -> None:
    image = files(js.mammogram_png())
    chosen = client.post("/v1/mammography/analyses?model=mg-tiny@1", files=image)
    assert chosen.status_code == 202 and chosen.json()["model"] == "mg-tiny@1"
    other_stage = client.post("/v1/mammography/analyses?model=us-tiny", files=image)
    assert other_stage.status_code == 422
    assert other_stage.json()["type"] == "urn:breastdx:problem:model_stage_mismatch"
    unknown = client.post("/v1/mammography/analyses?model=nothing", files=image)
    assert unknown.status_code == 404
    assert unknown.json()["type"] == "urn:breastdx:problem:unknown_model"
    extra = client.post("/v1/mammography/analyses?modle=mg-tiny", files=image)
    assert extra.status_code == 422
    assert extra.json()["type"] == "urn:breastdx:problem:validation_error"


def test_unknown_stage_lists_valid_stages(client: TestClient) -> None:
    response = client.post("/v1/cardiology/analyses", files=files(js.ultrasound_png()))
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == "urn:breastdx:problem:unknown_stage"
    assert body["valid_stages"] == ["mammography", "ultrasound", "histopathology"]


@pytest.mark.parametrize("job_id", ["0" * 32, "not-a-job", "../../etc"])
def test_unknown_job_is_404(client: TestClient, job_id: str) -> None:
    response = client.get(f"/v1/analyses/{job_id}")
    assert response.status_code == 404
    assert response.json()["type"] in {
        "urn:breastdx:problem:job_not_found",
        "urn:breastdx:problem:not_found",
    }


def test_full_in_process_pool_answers_503(store: Path) -> None:
    with make_client(store, inprocess_workers=1, inprocess_max_pending=1) as client:
        first = client.post(
            "/v1/mammography/analyses?model=mg-slow", files=files(js.mammogram_png())
        )
        assert first.status_code == 202
        busy = client.post("/v1/mammography/analyses", files=files(js.mammogram_png()))
        assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1
        assert busy.json()["type"] == "urn:breastdx:problem:service_busy"
        assert js.poll_final(client, first.headers["location"])["state"] == "succeeded"


def test_a_finished_job_frees_its_in_process_slot_at_once(store: Path) -> None:
    """The retry pause is for failed attempts only: with one slot, the next job is accepted
    right after the previous one finished (not after a retry interval)."""
    with make_client(
        store, inprocess_workers=1, inprocess_max_pending=1, retry_intervals_s=[5]
    ) as client:
        for _ in range(3):
            deadline = time.monotonic() + 1.0
            while True:
                response = client.post(
                    "/v1/ultrasound/analyses",
                    files=files(js.ultrasound_png(1)),
                    headers={"Prefer": "wait=30"},
                )
                if response.status_code != 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            assert response.status_code == 200 and response.json()["state"] == "succeeded"


def test_in_process_job_past_its_time_limit_fails_at_the_limit(store: Path) -> None:
    """A thread cannot be stopped: the job fails at the limit, the late result is discarded."""
    with make_client(store, job_timeout_s=1, inprocess_workers=1) as client:
        started = time.monotonic()
        response = client.post(
            "/v1/mammography/analyses?model=mg-slow",
            files=files(js.mammogram_png()),
            headers={"Prefer": "wait=30"},
        )
        waited = time.monotonic() - started
        body = response.json()
        assert response.status_code == 200 and body["state"] == "failed"
        assert body["error"]["code"] == "job_timeout" and "1" in body["error"]["detail"]
        assert waited < 2.5  # woken at the limit, not when the slow model finished
        # the attempt runs on and ends; its result does not replace the failure
        later = client.post("/v1/mammography/analyses", files=files(js.mammogram_png()))
        done = js.poll_final(client, later.headers["location"])
        assert done["state"] == "succeeded"  # the slot was freed
        assert client.get(body["links"]["self"]).json()["state"] == "failed"
        assert client.get(f"/v1/analyses/{body['id']}/mask.png").status_code == 409


def test_readyz_verifies_served_models(client: TestClient) -> None:
    response = js.ready(client)
    assert response.status_code == 200
    checks = {c["name"]: c for c in response.json()["checks"]}
    assert "mg-tiny@1" in checks["models"]["detail"] and checks["workers"]["ok"]


def test_openapi_documents_the_v1_api(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    post = paths["/v1/{stage}/analyses"]["post"]
    assert "multipart/form-data" in post["requestBody"]["content"]
    assert {"202", "200", "401", "413", "415", "422", "429", "503"} <= set(post["responses"])
    assert "/v1/analyses/{job_id}/mask.png" in paths and "/v1/models" in paths
