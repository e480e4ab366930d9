"""mini-MIAS reader: Info.txt parsing, circles (1024 grid, origin bottom-left) and masks."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from imaging.record import Laterality, ViewPosition
from training.data.dataset import draw_circle, load_sample
from training.data.mias import parse_info, read_mias
from training.data.records import (
    MALIGNANT,
    Circle,
    DatasetFormatError,
    DatasetLayoutError,
    Modality,
)
from training.data.synthetic import make_mias

SIZE = 256


@pytest.fixture(scope="module")
def mias_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mias(tmp_path_factory.mktemp("mias"), n=12, seed=2, size=SIZE)


@pytest.fixture
def mias_copy(mias_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(mias_root, tmp_path / "mini-mias"))


def test_parse_info_skips_free_text_and_keeps_every_row(mias_root: Path) -> None:
    rows = parse_info(mias_root / "Info.txt")
    assert sorted(rows) == [f"mdb{k:03d}" for k in range(1, 13)]
    assert len(rows["mdb005"]) == 2  # two abnormalities on one film
    assert rows["mdb004"] == [
        {"class": "NORM", "severity": None, "tissue": "G", "x": None, "y": None, "radius": None}
    ]
    assert rows["mdb003"][0]["severity"] == "M" and rows["mdb003"][0]["x"] is None  # *NOTE 3*
    assert rows["mdb011"][0]["x"] is None  # a mass listed without a location


def test_reads_films_with_labels_sides_and_patients(mias_root: Path) -> None:
    samples = {s.id: s for s in read_mias(mias_root)}
    assert len(samples) == 12
    assert samples["mdb002"].label == MALIGNANT and samples["mdb002"].class_name == "malignant"
    assert samples["mdb004"].class_name == "normal" and not samples["mdb004"].circles
    assert samples["mdb005"].class_name == "benign" and len(samples["mdb005"].circles) == 2
    assert samples["mdb001"].laterality is Laterality.RIGHT  # odd: right, even: left
    assert samples["mdb002"].laterality is Laterality.LEFT
    assert (
        samples["mdb001"].patient_id == samples["mdb002"].patient_id != samples["mdb003"].patient_id
    )
    assert all(s.view is ViewPosition.MLO and s.modality is Modality.MG for s in samples.values())
    assert samples["mdb003"].extra["mask_incomplete"] and not samples["mdb003"].segmentable
    assert samples["mdb011"].extra["mask_incomplete"] and samples["mdb001"].segmentable


def test_circle_lands_on_the_lesion(mias_root: Path) -> None:
    sample = next(s for s in read_mias(mias_root) if s.id == "mdb001")
    row = sample.extra["abnormalities"][0]
    image, mask = load_sample(sample)
    ys, xs = np.nonzero(mask)
    scale = SIZE / 1024
    assert xs.mean() == pytest.approx(row["x"] * scale, abs=1.0)
    assert ys.mean() == pytest.approx((1024 - row["y"]) * scale, abs=1.0)  # origin bottom-left
    assert mask.sum() == pytest.approx(np.pi * (row["radius"] * scale) ** 2, rel=0.1)
    ring = _ring(mask)
    assert image[..., 0][mask > 0].mean() > image[..., 0][ring].mean() + 0.1  # the bright mass


def test_circles_scale_to_the_stored_image() -> None:
    circle = Circle(512.0, 1024.0 - 300.0, 40.0, (1024, 1024)).scaled((512, 512))
    assert (circle.x, circle.y, circle.radius) == (256.0, 362.0, 20.0)
    mask = np.zeros((512, 512), np.uint8)
    draw_circle(mask, circle)
    ys, xs = np.nonzero(mask)
    assert (xs.mean(), ys.mean()) == (pytest.approx(256, abs=0.5), pytest.approx(362, abs=0.5))


def test_malformed_rows_and_missing_files(mias_copy: Path) -> None:
    info = mias_copy / "Info.txt"
    text = info.read_text()
    info.write_text(text + "\nmdb013 X CIRC B 1 2 3\n")
    with pytest.raises(DatasetFormatError, match=r"Info\.txt:\d+: expected tissue"):
        read_mias(mias_copy)
    info.write_text(text + "\nmdb013 F SPIC 1 2 3\n")
    with pytest.raises(DatasetFormatError, match="needs a severity"):
        read_mias(mias_copy)
    info.write_text(text + "\nmdb013 F SPIC M 1 2\n")
    with pytest.raises(DatasetFormatError, match="x, y and radius"):
        read_mias(mias_copy)
    info.write_text(text + "\nmdb013 F NORM\n")
    with pytest.raises(DatasetLayoutError, match=r"mdb013\.png"):
        read_mias(mias_copy)
    info.unlink()
    with pytest.raises(DatasetLayoutError, match=r"Info\.txt"):
        read_mias(mias_copy)


def _ring(mask: np.ndarray) -> np.ndarray:
    import cv2

    grown = cv2.dilate(mask, np.ones((15, 15), np.uint8))
    return (grown > 0) & (mask == 0)


@pytest.mark.realdata
def test_real_mias_rows_and_circle_placement(shared_data: Path) -> None:
    root = shared_data / "mammography" / "mini-mias"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    samples = {s.id: s for s in read_mias(root)}
    assert len(samples) == 244
    counts = Counter(s.class_name for s in samples.values())
    assert counts == {"normal": 159, "benign": 47, "malignant": 38}
    assert {k for k, s in samples.items() if s.extra["mask_incomplete"]} == {
        "mdb059",
        "mdb233",
        "mdb245",
    }
    # mdb002 G CIRC B 522 280 69 -> 512 px image: centre (261, 512 - 140), radius 34.5
    image, mask = load_sample(samples["mdb002"])
    assert image.shape == (512, 512, 1)
    ys, xs = np.nonzero(mask)
    assert (xs.mean(), ys.mean()) == (pytest.approx(261, abs=1), pytest.approx(372, abs=1))
    assert mask.sum() == pytest.approx(np.pi * 34.5**2, rel=0.05)
    # masses are brighter inside the circle than inside the same circle mirrored top-down,
    # which confirms the bottom-left origin on the data itself
    wins = []
    for sample in samples.values():
        if sample.circles and sample.extra["abnormalities"][0]["class"] in ("CIRC", "SPIC", "MISC"):
            image, mask = load_sample(sample)
            mirrored = np.zeros_like(mask)
            for c in sample.circles:
                draw_circle(mirrored, Circle(c.x, 1024 - c.y, c.radius, c.grid).scaled(mask.shape))
            wins.append(image[mask > 0].mean() > image[mirrored > 0].mean())
    assert len(wins) >= 30 and np.mean(wins) > 0.65
