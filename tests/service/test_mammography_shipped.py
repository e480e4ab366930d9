"""The shipped mammography model end to end on real films (issue 12).

- It finds masses: on the first CBIS-DDSM films of the committed split's TEST part (never trained
  on, never used to choose thresholds), through the service's own pipeline at the original
  resolution, its lesions hit the true boxes (the FROC's hit rule) on most films, and each hit
  carries the per-lesion facts the issue asks for (box, contour, area, score, malignancy).
- One mini-MIAS test film with a lesion reaches the model the same way whatever kind of file
  carries it: the stored PNG and an 8-bit PGM (mini-MIAS's own format) give the same lesions, and
  a 12-bit digitised-film DICOM Secondary Capture (Modality RG, Body Part BREAST) of the same
  pixels the same strongest lesion, through the API
  and through ``breastdx predict`` (which writes a DICOM input's SEG and SR beside the result).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom import uid
from pydicom.pixels import set_pixel_data

from imaging.lesion_match import box_iou, match_marks
from models_registry.registry import PRODUCTION, Registry
from models_registry.store import SHIPPED_STORE
from service.app import create_app
from service.cli_predict import main as predict
from service.config import Settings
from service.inference import analyse, clear_runners
from tests.imaging import dicom_factory as dcm

pytestmark = pytest.mark.realdata

MODEL = "mammography-unet"
SPLIT = SHIPPED_STORE / "splits" / "mammography-cbis-mias.json"
N_CBIS_FILMS = 12
MIN_FILMS_HIT = 6  # the card's CBIS-DDSM sensitivity at its operating point is well above half


@pytest.fixture(scope="module")
def registry() -> Registry:
    registry = Registry([SHIPPED_STORE])
    if MODEL not in registry.names():
        pytest.skip(f"{MODEL} is not in the shipped store")
    card = registry.card(f"{MODEL}@{PRODUCTION}")
    if card.training.config["data"]["dataset"] != "cbis_ddsm_coco+mias":
        pytest.skip(f"{card.ref} is not the CBIS-DDSM + mini-MIAS mass finder")
    clear_runners()
    return registry


def _test_ids() -> list[str]:
    entries = json.loads(SPLIT.read_text(encoding="utf-8"))["entries"]
    return [e["sample_id"] for e in entries if e["split"] == "test"]


def test_finds_masses_on_cbis_ddsm_test_films(registry: Registry, shared_data: Path) -> None:
    from training.data.cbis_ddsm_coco import read_cbis_coco

    root = shared_data / "cbis-ddsm-mass"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    wanted = set(_test_ids())
    films = [s for s in read_cbis_coco(root) if s.id in wanted][:N_CBIS_FILMS]
    assert len(films) == N_CBIS_FILMS
    analyses = analyse("mammography", [f.image_path for f in films], registry=registry)
    calibration = registry.card(MODEL).calibration
    assert calibration.image_malignancy == "lesion_weighted"
    assert calibration.lesion_temperature != calibration.temperature
    films_hit = 0
    for film, analysis in zip(films, analyses, strict=True):
        result = analysis.result
        assert (result.input.rows, result.input.columns) == (800, 800)  # original resolution
        assert analysis.mask.shape == (800, 800)
        truths = [tuple(float(v) for v in box) for box in film.extra["boxes"]]
        marks = [(tuple(float(v) for v in les.bbox), les.score or 0.0) for les in result.lesions]
        hit = match_marks(marks, truths)  # type: ignore[arg-type]
        films_hit += any(hit)
        for lesion in result.lesions:
            assert lesion.score is not None and 0.0 <= lesion.score <= 1.0
            assert lesion.malignancy is not None and 0.0 <= lesion.malignancy <= 1.0
            assert len(lesion.contour) >= 3 and lesion.area_px > 0
        if not result.lesions:  # no lesion above the operating point: a score all the same
            assert result.mask.lesion_count == 0
        assert result.malignancy is not None and 0.0 <= result.malignancy.probability <= 1.0
        # lesion_weighted: derived from the lesion map, so its temperature is the one shown
        assert result.malignancy.temperature == calibration.lesion_temperature
    assert films_hit >= MIN_FILMS_HIT, f"{films_hit} of {N_CBIS_FILMS} test films hit"


def _mias_film_with_lesion(shared_data: Path) -> Path:
    from training.data.mias import read_mias

    root = shared_data / "mammography" / "mini-mias"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    wanted = set(_test_ids())
    films = [s for s in read_mias(root) if s.id in wanted and s.circles]
    assert films, "the committed split's test part holds mini-MIAS films with a lesion"
    return films[0].image_path


def _film_dicom(pixels: np.ndarray) -> bytes:
    """The film as a digitised-film Secondary Capture: 12 bits, Modality RG, Body Part BREAST."""
    ds = dcm.base_dataset(uid.SecondaryCaptureImageStorage, "RG")
    twelve = (pixels.astype(np.uint16) << 4) | (pixels.astype(np.uint16) >> 4)  # 0..4095
    set_pixel_data(ds, twelve, "MONOCHROME2", 12, generate_instance_uid=False)
    ds.ConversionType = "DF"
    ds.BodyPartExamined = "BREAST"
    return dcm.to_bytes(ds)


@pytest.fixture(scope="module")
def film_files(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    png = _mias_film_with_lesion(shared_data)
    pixels = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    folder = tmp_path_factory.mktemp("films")
    pgm = folder / f"{png.stem}.pgm"
    assert cv2.imwrite(str(pgm), pixels)
    dicom = folder / f"{png.stem}-film.dcm"
    dicom.write_bytes(_film_dicom(pixels))
    return {"png": png, "pgm": pgm, "dicom": dicom}


@pytest.fixture(scope="module")
def client(registry: Registry) -> Iterator[TestClient]:
    settings = Settings(model_store=SHIPPED_STORE, allow_anonymous=True)
    with TestClient(create_app(settings)) as client:
        yield client


def _post(client: TestClient, path: Path) -> dict[str, object]:
    files = [("file", (path.name, path.read_bytes(), "application/octet-stream"))]
    response = client.post("/v1/mammography/analyses", files=files, headers={"Prefer": "wait=60"})
    assert response.status_code in (200, 202), response.text
    body: dict[str, object] = response.json()
    deadline = time.monotonic() + 120
    while body["state"] not in ("succeeded", "failed") and time.monotonic() < deadline:
        time.sleep(0.6)
        body = client.get(f"/v1/analyses/{body['id']}").json()
    assert body["state"] == "succeeded", body
    return body


def _strongest_box(result: dict[str, object]) -> tuple[float, float, float, float]:
    lesions = result["lesions"]
    assert lesions, "a lesion is marked"
    best = max(lesions, key=lambda lesion: lesion["score"])  # type: ignore[index,arg-type]
    return tuple(float(v) for v in best["bbox"])  # type: ignore[return-value,index]


def _boxes(result: dict[str, object]) -> list[tuple[int, ...]]:
    return [tuple(lesion["bbox"]) for lesion in result["lesions"]]  # type: ignore[index,union-attr]


def test_every_film_kind_reaches_the_model_alike_through_the_api(
    client: TestClient, film_files: dict[str, Path]
) -> None:
    results = {}
    for kind, path in film_files.items():
        body = _post(client, path)
        (result,) = body["result"]  # type: ignore[misc]
        assert result["stage"] == "mammography" and result["model"]["name"] == MODEL
        rows, columns = cv2.imread(str(film_files["png"]), cv2.IMREAD_GRAYSCALE).shape
        assert (result["input"]["rows"], result["input"]["columns"]) == (rows, columns), kind
        results[kind] = result
    assert results["dicom"]["input"]["format"] == "dicom"
    assert results["dicom"]["input"]["modality"] == "RG"
    reference = _boxes(results["png"])
    assert reference, "the film's lesion is marked"
    assert _boxes(results["pgm"]) == reference  # the same 8-bit pixels: the very same lesions
    # the 12-bit film's pixels differ by rounding (255 -> 4095 levels): its strongest lesion is
    # the same one (a fainter one near the presence threshold may come or go)
    strongest = {kind: _strongest_box(results[kind]) for kind in ("png", "dicom")}
    assert box_iou(strongest["png"], strongest["dicom"]) >= 0.5, strongest


def test_predict_analyses_the_pgm_and_writes_seg_and_sr_for_the_film_dicom(
    registry: Registry, film_files: dict[str, Path], tmp_path: Path
) -> None:
    inputs = [film_files["pgm"], film_files["dicom"]]
    argv = ["--stage", "mammography", *map(str, inputs), "--out", str(tmp_path)]
    assert predict([*argv, "--store", str(SHIPPED_STORE)]) == 0
    for path in inputs:
        result = json.loads((tmp_path / f"{path.stem}.json").read_text(encoding="utf-8"))
        assert result["lesions"] and result["model"]["name"] == MODEL
        mask = cv2.imread(str(tmp_path / f"{path.stem}.mask.png"), cv2.IMREAD_UNCHANGED)
        shape = cv2.imread(str(film_files["png"]), cv2.IMREAD_GRAYSCALE).shape
        assert mask.shape == shape and mask.max() == 255  # the film's own size
    stem = film_files["dicom"].stem  # a DICOM input: its SEG (a lesion was found) and SR
    assert (tmp_path / f"{stem}.seg.dcm").is_file() and (tmp_path / f"{stem}.sr.dcm").is_file()
