"""The API's DICOM outputs when nothing is found, and the stage check by anatomy over HTTP."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom.pixels import set_pixel_data

from service.app import create_app
from service.config import Settings
from tests.conftest import shared_data_root
from tests.imaging import dicom_factory as dcm
from tests.service import jobs_support as js

PROBLEM = "urn:breastdx:problem:"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    store = js.build_store(tmp_path_factory.mktemp("findings"))
    with TestClient(create_app(Settings(model_store=store, allow_anonymous=True))) as found:
        yield found


def submit(client: TestClient, stage: str, data: bytes) -> Any:
    files = [("file", ("image.dcm", data, "application/octet-stream"))]
    return client.post(f"/v1/{stage}/analyses", files=files, headers={"Prefer": "wait=60"})


def black_mammogram() -> bytes:
    """An MG of zeros: the test model (identity convolution) finds nothing in it."""
    ds, pixels = dcm.mammogram(rows=160, columns=128, with_voi_lut=False)
    set_pixel_data(ds, np.zeros_like(pixels), "MONOCHROME2", 12, generate_instance_uid=False)
    return dcm.to_bytes(ds)


def test_no_finding_seg_is_404_and_the_sr_says_so(client: TestClient) -> None:
    response = submit(client, "mammography", black_mammogram())
    job = response.json()
    assert response.status_code == 200 and job["state"] == "succeeded", job
    assert job["result"][0]["mask"]["lesion_count"] == 0
    seg = client.get(job["links"]["seg"])
    assert seg.status_code == 404
    assert seg.headers["content-type"].startswith("application/problem+json")
    assert seg.json()["type"] == PROBLEM + "no_lesion_found"
    sr_response = client.get(job["links"]["sr"])
    assert sr_response.status_code == 200
    sr = hd.sr.srread(io.BytesIO(sr_response.content))
    assert sr.content.get_planar_roi_measurement_groups() == []
    image = sr.content.get_image_measurement_groups()[0]
    found = {e.name.value: e.value.value for e in image.get_qualitative_evaluations()}
    assert found["52988006"] == "121054"  # Lesion: Absent
    assert found["111017"] == "111241"  # all algorithms succeeded; without findings


def test_a_finding_still_has_its_seg(client: TestClient) -> None:
    job = submit(client, "mammography", js.mammogram_dicom()).json()
    assert job["result"][0]["mask"]["lesion_count"] > 0
    assert client.get(job["links"]["seg"]).status_code == 200


def chest_dx() -> bytes:
    ds = dcm.base_dataset("1.2.840.10008.5.1.4.1.1.1.1", "DX")  # Digital X-Ray For Presentation
    set_pixel_data(
        ds, dcm.mammogram_pixels(200, 160, 12), "MONOCHROME2", 12, generate_instance_uid=False
    )
    ds.BodyPartExamined = "CHEST"
    return dcm.to_bytes(ds)


def test_a_chest_radiograph_is_refused_naming_its_body_part(client: TestClient) -> None:
    cases = [chest_dx()]
    real = shared_data_root() / "dicom" / "dx_image.dcm"  # a dog's chest, Body Part Examined THORAX
    if real.is_file():
        cases.append(real.read_bytes())
    for data, part in zip(cases, ["CHEST", "THORAX"], strict=False):
        response = submit(client, "mammography", data)
        assert response.status_code == 422, response.text
        problem = response.json()
        assert problem["type"] == PROBLEM + "wrong_stage"
        assert f"Body Part Examined is {part}" in problem["detail"]
        assert problem["body_part"] == part
