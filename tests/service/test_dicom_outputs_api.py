"""``GET /v1/analyses/{id}/seg.dcm`` and ``sr.dcm``: built when the job succeeds, in process and by
a real ``breastdx worker``, read back with highdicom against the source and the API's mask.png."""

from __future__ import annotations

import io
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import highdicom as hd
import numpy as np
import pydicom
import pytest
import redis
from fastapi.testclient import TestClient
from pydicom import uid
from pydicom.dataset import Dataset

from service.app import create_app
from service.config import Settings
from tests.imaging import dicom_factory as dcm
from tests.service import jobs_support as js

NS = "t-dicom-out"
PROBLEM = "urn:breastdx:problem:"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return js.build_store(tmp_path_factory.mktemp("dicom-out"))


def make_client(store: Path, **overrides: Any) -> TestClient:
    return TestClient(create_app(Settings(model_store=store, allow_anonymous=True, **overrides)))


@pytest.fixture
def in_process(store: Path) -> Iterator[TestClient]:
    with make_client(store) as client:
        yield client


@pytest.fixture(scope="module")
def worker(store: Path) -> Iterator[subprocess.Popen[bytes]]:
    js.redis_or_skip().flushdb()
    proc = js.start_worker(js.worker_env(store, NS))
    yield proc
    js.stop_worker(proc)


def queued_client(store: Path, namespace: str = NS) -> TestClient:
    return make_client(store, redis_url=js.TEST_REDIS_URL, namespace=namespace)


@pytest.fixture
def queued(store: Path, worker: subprocess.Popen[bytes], db: redis.Redis) -> Iterator[TestClient]:
    with queued_client(store) as client:
        yield client


@pytest.fixture(
    params=["generated-mg", pytest.param("real-us", marks=pytest.mark.realdata)],
)
def source(request: pytest.FixtureRequest) -> tuple[str, bytes]:
    """(stage, DICOM file): an MG made with pydicom, or the real ultrasound US1_UNCR.dcm."""
    if request.param == "generated-mg":
        return "mammography", js.mammogram_dicom()
    folder: Path = request.getfixturevalue("shared_dicom_dir")
    return "ultrasound", (folder / "US1_UNCR.dcm").read_bytes()


def submit(client: TestClient, stage: str, *images: bytes, wait: bool = True) -> dict[str, Any]:
    parts = [("file", (f"i{n}", data, "application/octet-stream")) for n, data in enumerate(images)]
    headers = {"Prefer": "wait=60"} if wait else {}
    response = client.post(f"/v1/{stage}/analyses", files=parts, headers=headers)
    assert response.status_code in {200, 202}, response.text
    body: dict[str, Any] = response.json()
    return body


def succeeded(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    done = body if body["state"] == "succeeded" else js.poll_final(client, body["links"]["self"])
    assert done["state"] == "succeeded", done
    return done


def referenced(ds: Dataset) -> set[str]:
    """Every Referenced SOP Instance UID anywhere in ``ds``."""
    return {str(e.value) for e in ds.iterall() if e.keyword == "ReferencedSOPInstanceUID"}


def check_outputs(client: TestClient, job: dict[str, Any], index: int, data: bytes) -> None:
    """SEG and SR of input ``index``: classes, references, the mask, the model's name."""
    source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    query = f"?index={index}"
    seg_response = client.get(job["links"]["seg"] + query)
    assert seg_response.status_code == 200, seg_response.text
    assert seg_response.headers["content-type"] == "application/dicom"
    seg = hd.seg.segread(io.BytesIO(seg_response.content))
    assert seg.SOPClassUID == uid.SegmentationStorage
    assert source.SOPInstanceUID in referenced(seg)
    assert (seg.StudyInstanceUID, seg.PatientID) == (source.StudyInstanceUID, source.PatientID)

    png = client.get(job["links"]["mask"] + query).content
    mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)  # (H, W)
    assert mask is not None
    assert set(np.unique(mask)) <= {0, 255} and mask.any()  # both test images show a lesion
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID])[0, :, :, 0]  # (H, W)
    assert np.array_equal(np.asarray(pixels) > 0, mask == 255)

    sr_response = client.get(job["links"]["sr"] + query)
    assert sr_response.status_code == 200 and sr_response.headers["content-type"] == (
        "application/dicom"
    )
    sr = hd.sr.srread(io.BytesIO(sr_response.content))
    assert sr.SOPClassUID == uid.ComprehensiveSRStorage
    assert {source.SOPInstanceUID, seg.SOPInstanceUID} <= referenced(sr)  # the SEG served above
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    device = report.get_observer_contexts()[0].observer_identifying_attributes
    assert isinstance(device, hd.sr.DeviceObserverIdentifyingAttributes)
    assert device.model_name == job["model"]  # TID 1004: the model is the device observer
    assert job["model"] in sr.SoftwareVersions and "@" in job["model"]
    assert client.get(job["links"]["seg"] + query).content == seg_response.content  # built once


def test_in_process_builds_seg_and_sr_of_a_dicom_input(
    in_process: TestClient, source: tuple[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    stage, data = source
    caplog.set_level(logging.DEBUG)
    job = succeeded(in_process, submit(in_process, stage, data))
    check_outputs(in_process, job, 0, data)
    assert not any(marker in caplog.text for marker in dcm.PHI_MARKERS)
    sop = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("service")]
    assert ours and not any(sop in message for message in ours)


@pytest.mark.integration
def test_worker_builds_seg_and_sr_of_a_dicom_input(
    queued: TestClient, source: tuple[str, bytes]
) -> None:
    stage, data = source
    job = succeeded(queued, submit(queued, stage, data))
    assert job["attempts"] == 1
    check_outputs(queued, job, 0, data)


def test_png_input_answers_a_problem_and_index_selects_the_input(in_process: TestClient) -> None:
    data = js.mammogram_dicom()
    job = succeeded(in_process, submit(in_process, "mammography", js.mammogram_png(), data))
    check_outputs(in_process, job, 1, data)
    for name in ("seg", "sr"):
        response = in_process.get(f"{job['links'][name]}?index=0")
        assert response.status_code == 422
        assert response.headers["content-type"].startswith("application/problem+json")
        problem = response.json()
        assert problem["type"] == PROBLEM + "dicom_output_unavailable"
        assert "DICOM outputs need a DICOM input: they reference the source" in problem["detail"]
        assert problem["input_format"] == "png"
        missing = in_process.get(f"{job['links'][name]}?index=2")
        assert missing.status_code == 404
        assert missing.json()["type"] == PROBLEM + "artefact_not_found"
    only_png = succeeded(in_process, submit(in_process, "ultrasound", js.ultrasound_png()))
    assert only_png["links"]["seg"] is None and only_png["links"]["sr"] is None
    assert in_process.get(f"{only_png['links']['self']}/seg.dcm").status_code == 422


def test_unbuildable_source_keeps_its_analysis(
    in_process: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    ds, _ = dcm.mammogram(rows=160, columns=128)
    data = dcm.to_bytes(dcm.with_attributes(ds, SeriesInstanceUID=None))
    caplog.set_level(logging.DEBUG)
    job = succeeded(in_process, submit(in_process, "mammography", data))
    assert in_process.get(job["links"]["mask"]).status_code == 200
    response = in_process.get(job["links"]["sr"])
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"] == PROBLEM + "dicom_output_unavailable"
    assert problem["reason"] == "dicom_source_unusable" and "SeriesInstanceUID" in problem["detail"]
    assert "no DICOM outputs for input 0: dicom_source_unusable" in caplog.text
    assert not any(marker in caplog.text for marker in dcm.PHI_MARKERS)


def test_unknown_job_is_404(in_process: TestClient) -> None:
    for name in ("seg", "sr"):
        response = in_process.get(f"/v1/analyses/{'0' * 32}/{name}.dcm")
        assert response.status_code == 404
        assert response.json()["type"] == PROBLEM + "job_not_found"


@pytest.mark.integration
def test_before_completion_answers_409(store: Path, db: redis.Redis) -> None:
    """A job on a namespace no worker serves stays queued."""
    with queued_client(store, namespace="t-dicom-idle") as client:
        job = submit(client, "mammography", js.mammogram_dicom(), wait=False)
        assert job["state"] == "queued" and job["links"]["seg"] is None
        for name in ("seg", "sr"):
            response = client.get(f"{job['links']['self']}/{name}.dcm")
            assert response.status_code == 409
            assert response.json()["type"] == PROBLEM + "job_not_finished"
