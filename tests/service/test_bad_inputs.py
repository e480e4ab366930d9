"""A corpus of bad requests, each answered at submission with its 4xx problem document and
nothing left behind in Redis (no record, no upload, no queued job)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.jobs.backend import close_backend
from tests.service import jobs_support as js

NS = "t-bad"
LIMIT = 200_000  # max_upload_bytes of these tests


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return js.build_store(tmp_path_factory.mktemp("bad"))


@pytest.fixture
def client(store: Path, db: redis.Redis) -> Iterator[TestClient]:
    settings = Settings(
        model_store=store,
        redis_url=js.TEST_REDIS_URL,
        namespace=NS,
        allow_anonymous=True,
        max_upload_bytes=LIMIT,
        max_pixels=400 * 400,
        max_files=3,
    )
    with TestClient(create_app(settings)) as client:
        yield client
    close_backend(settings)


def nothing_left(db: redis.Redis) -> None:
    assert list(js.keys(db, f"{NS}:job:*")) == []
    assert list(js.keys(db, f"{NS}:idem:*")) == []
    assert [k for k in js.keys(db, "rq:*") if NS in k] == []


def multipart(*images: bytes, media_type: str = "application/octet-stream") -> dict[str, Any]:
    return {"files": [("file", (f"i{n}", data, media_type)) for n, data in enumerate(images)]}


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def big_png() -> bytes:
    return js.png(np.full((500, 500), 90, np.uint8))  # 250 000 px > max_pixels, a few kB


CORPUS: dict[str, tuple[str, Callable[[], dict[str, Any]], int, str]] = {
    "random bytes": (
        "ultrasound",
        lambda: multipart(np.random.default_rng(0).bytes(4096)),
        415,
        "unrecognised_format",
    ),
    "zero bytes": ("ultrasound", lambda: multipart(b""), 400, "empty_input"),
    "truncated DICOM": (
        "mammography",
        lambda: multipart(truncated(js.mammogram_dicom())),
        422,
        "truncated_image",
    ),
    "truncated PNG": (
        "ultrasound",
        lambda: multipart(truncated(js.ultrasound_png())),
        422,
        "truncated_image",
    ),
    "DICOM SR": ("mammography", lambda: multipart(js.sr_dicom()), 422, "not_an_image"),
    "DICOM SEG": ("histopathology", lambda: multipart(js.seg_dicom()), 422, "not_an_image"),
    "patch to mammography": ("mammography", lambda: multipart(js.he_patch()), 422, "wrong_stage"),
    "mammogram to ultrasound": (
        "ultrasound",
        lambda: multipart(js.mammogram_dicom()),
        422,
        "wrong_stage",
    ),
    "grey image to histopathology": (
        "histopathology",
        lambda: multipart(js.ultrasound_png()),
        422,
        "wrong_stage",
    ),
    "one bad image among good ones": (
        "ultrasound",
        lambda: multipart(js.ultrasound_png(1), b"\x89PNG\r\n\x1a\nnope"),
        422,
        "truncated_image",
    ),
    "too many pixels": ("mammography", lambda: multipart(big_png()), 413, "image_too_large"),
    "declared size over the limit": (
        "ultrasound",
        lambda: multipart(b"\x00" * (LIMIT + 1)),
        413,
        "request_too_large",
    ),
    "streamed size over the limit": (
        "ultrasound",
        lambda: {
            "content": (b"\x00" * 10_000 for _ in range(LIMIT // 10_000 + 2)),
            "headers": {"Content-Type": "multipart/form-data; boundary=xyz"},
        },
        413,
        "request_too_large",
    ),
    "text part": (
        "ultrasound",
        lambda: multipart(js.ultrasound_png(), media_type="text/plain"),
        415,
        "unsupported_media_type",
    ),
    "JSON body": ("ultrasound", lambda: {"json": {"image": "abc"}}, 415, "unsupported_media_type"),
    "no file part": (
        "ultrasound",
        lambda: {
            "content": b"--xyz--\r\n",
            "headers": {"Content-Type": "multipart/form-data; boundary=xyz"},
        },
        422,
        "no_input",
    ),
    "other form field": (
        "ultrasound",
        lambda: multipart(js.ultrasound_png()) | {"data": {"patient": "x"}},
        400,
        "malformed_request",
    ),
    "too many files": (
        "histopathology",
        lambda: multipart(*(js.he_patch(s) for s in range(4))),
        413,
        "too_many_inputs",
    ),
    "unknown stage": ("dermatology", lambda: multipart(js.ultrasound_png()), 404, "unknown_stage"),
    "unknown model": (
        "ultrasound/analyses?model=ghost",
        lambda: multipart(js.ultrasound_png()),
        404,
        "unknown_model",
    ),
    "bad idempotency key": (
        "ultrasound",
        lambda: multipart(js.ultrasound_png()) | {"headers": {"Idempotency-Key": "a b"}},
        400,
        "invalid_idempotency_key",
    ),
}


@pytest.mark.parametrize("case", list(CORPUS))
def test_bad_request_is_a_problem_and_leaves_nothing(
    client: TestClient, db: redis.Redis, case: str
) -> None:
    stage, request, status, code = CORPUS[case]
    path = stage if "/" in stage else f"{stage}/analyses"
    response = client.post(f"/v1/{path}", **request())
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == f"urn:breastdx:problem:{code}" and body["status"] == status
    assert body["detail"] and body["title"]
    nothing_left(db)


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("name", "stage"),
    [
        ("sm_annotations.dcm", "histopathology"),
        ("seg_image_sm_dots.dcm", "histopathology"),
        ("seg_image_sm_control.dcm", "mammography"),
        ("sm_image.dcm", "mammography"),
        ("sm_image_grayscale.dcm", "histopathology"),
    ],
)
def test_shared_dicom_objects_of_the_wrong_kind(
    client: TestClient, db: redis.Redis, shared_dicom_dir: Path, name: str, stage: str
) -> None:
    data = (shared_dicom_dir / name).read_bytes()
    if len(data) > LIMIT:
        pytest.skip(f"{name} is larger than this test's upload limit")
    response = client.post(f"/v1/{stage}/analyses", **multipart(data))
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["type"].rsplit(":", 1)[1] in {"not_an_image", "wrong_stage"}
    nothing_left(db)
