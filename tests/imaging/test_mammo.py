"""Breast segmentation and canonical orientation, on synthetic and real (mini-MIAS) mammograms."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from imaging.geometry import Crop, Flip, Interpolation
from imaging.mammo import (
    BT601,
    BreastRegion,
    ChestWallSide,
    NoBreastFoundError,
    breast_region,
    canonical_flip_needed,
    chest_wall_side,
    prepare_mammogram,
    to_grey,
)
from imaging.record import Laterality


def synthetic_mammogram(
    h: int = 480,
    w: int = 400,
    *,
    chest_wall: str = "left",
    label: bool = True,
    border: bool = True,
    seed: int = 0,
    centre_x: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A half-ellipse breast on the ``chest_wall`` edge, a bright label and a bright film border.

    Returns:
        ``(image, breast)``: ``(h, w)`` float32 in [0, 1] and the true ``(h, w)`` bool breast.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    radius = np.sqrt(((xx - centre_x * w) / (0.7 * w)) ** 2 + ((yy - 0.5 * h) / (0.38 * h)) ** 2)
    breast = radius < 1.0
    texture = cv2.GaussianBlur(rng.random((h, w), dtype=np.float32), (0, 0), 3)
    tissue = 0.3 + 0.35 * (1.0 - radius**4) + 0.6 * (texture - 0.5)
    image = 0.02 + 0.02 * rng.random((h, w), dtype=np.float32)  # dark film background
    image[breast] = tissue[breast]
    if label:
        image[int(0.06 * h) : int(0.16 * h), int(0.8 * w) : int(0.92 * w)] = 1.0
    if border:
        image[: int(0.03 * h), :] = 0.9
    if chest_wall == "right":
        image, breast = image[:, ::-1], breast[:, ::-1]
    return np.clip(image, 0, 1).astype(np.float32), np.ascontiguousarray(breast)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("side", ["left", "right"])
def test_synthetic_breast_is_found_without_label_and_border(side: str) -> None:
    image, truth = synthetic_mammogram(chest_wall=side)
    region = breast_region(image)
    assert region.mask.shape == image.shape and region.mask.dtype == np.bool_
    assert _iou(region.mask, truth) > 0.97
    assert not region.mask[: int(0.03 * 480)].any()  # film border
    label = np.zeros_like(truth)
    label[int(0.06 * 480) : int(0.16 * 480), int(0.8 * 400) : int(0.92 * 400)] = True
    if side == "right":
        label = label[:, ::-1]
    assert not (region.mask & label).any()
    assert region.chest_wall is ChestWallSide(side)
    x, y, w, h = region.bbox
    rows, cols = np.nonzero(region.mask)
    assert (x, y, x + w - 1, y + h - 1) == (cols.min(), rows.min(), cols.max(), rows.max())


def test_large_image_and_rgb_input() -> None:
    image, truth = synthetic_mammogram(1500, 1200, seed=3)
    region = breast_region(np.repeat(image[:, :, None], 3, axis=2))
    assert _iou(region.mask, truth) > 0.97


def test_holes_are_filled() -> None:
    image, _ = synthetic_mammogram(label=False, border=False)
    image[200:260, 60:120] = 0.0  # a dark (fatty) hole inside the breast
    assert breast_region(image).mask[200:260, 60:120].all()


def test_blank_image_has_no_breast() -> None:
    with pytest.raises(NoBreastFoundError, match="blank"):
        breast_region(np.zeros((64, 64), np.float32))


@pytest.mark.parametrize(
    ("side", "laterality", "flip"),
    [
        ("left", Laterality.RIGHT, False),  # content wins over laterality
        ("right", Laterality.LEFT, True),
        ("right", Laterality.UNKNOWN, True),
    ],
)
def test_flip_follows_the_image_content(side: str, laterality: Laterality, flip: bool) -> None:
    image, truth = synthetic_mammogram(chest_wall=side)
    assert canonical_flip_needed(image, laterality) is flip
    assert canonical_flip_needed(truth, laterality) is flip  # a bool mask is used as is


@pytest.mark.parametrize(
    ("laterality", "flip"),
    [(Laterality.RIGHT, True), (Laterality.LEFT, False), (Laterality.UNKNOWN, False)],
)
def test_laterality_decides_only_when_content_is_ambiguous(
    laterality: Laterality, flip: bool
) -> None:
    image, truth = synthetic_mammogram(centre_x=0.5, label=False, border=False)  # full ellipse
    assert chest_wall_side(truth) is ChestWallSide.UNKNOWN
    assert canonical_flip_needed(image, laterality) is flip


@pytest.mark.parametrize("side", ["left", "right"])
def test_prepare_mammogram_crops_and_puts_the_chest_wall_left(side: str) -> None:
    image, _ = synthetic_mammogram(chest_wall=side)
    region = breast_region(image)
    out, geometry = prepare_mammogram(image, Laterality.UNKNOWN)
    x, y, w, h = region.bbox
    assert geometry.ops[0] == Crop(top=y, left=x, height=h, width=w)
    assert (Flip(horizontal=True) in geometry.ops) is (side == "right")
    assert out.shape == (h, w) and out.dtype == np.float32
    assert chest_wall_side(out > 0) is ChestWallSide.LEFT
    assert out[~geometry.apply_mask(region.mask)].max() == 0.0  # background masked
    back = geometry.to_original(
        geometry.apply_mask(region.mask), interpolation=Interpolation.NEAREST
    )
    np.testing.assert_array_equal(back, region.mask)


def test_prepare_mammogram_can_keep_the_background() -> None:
    image, _ = synthetic_mammogram()
    out, geometry = prepare_mammogram(image, mask_background=False)
    np.testing.assert_array_equal(out, geometry.apply_image(image))


# --- real data: mini-MIAS ----------------------------------------------------------------------

# Centres that lie in the background beyond the skin line on these 512 px images (checked by eye:
# calcifications recorded at the very edge of the breast); every other listed centre must be in.
MIAS_CENTRES_OUTSIDE_TISSUE = {"mdb212", "mdb214"}


@dataclass(frozen=True)
class _Case:
    name: str
    image: np.ndarray  # (512, 512) uint8
    region: BreastRegion


@pytest.fixture(scope="module")
def mias(shared_data: Path) -> tuple[list[_Case], dict[str, list[tuple[int, int]]]]:
    folder = shared_data / "mammography" / "mini-mias"
    if not (folder / "Info.txt").is_file():
        pytest.skip(f"{folder} is absent")
    centres: dict[str, list[tuple[int, int]]] = {}
    for line in (folder / "Info.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 7 and re.fullmatch(r"mdb\d{3}", parts[0]):
            x, y = int(parts[4]), int(parts[5])  # 1024 grid, origin bottom-left
            centres.setdefault(parts[0], []).append(((1023 - y) // 2, x // 2))  # (row, col)
    cases = []
    for path in sorted(folder.glob("mdb*.png")):
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        cases.append(_Case(path.stem, image, breast_region(image.astype(np.float32) / 255.0)))
    return cases, centres


@pytest.mark.realdata
def test_mias_abnormality_centres_lie_in_the_breast(mias: tuple) -> None:
    cases, centres = mias
    assert len(cases) > 200
    missed = [
        (case.name, rc)
        for case in cases
        for rc in centres.get(case.name, [])
        if not case.region.mask[rc] and case.name not in MIAS_CENTRES_OUTSIDE_TISSUE
    ]
    assert missed == []


@pytest.mark.realdata
def test_mias_labels_are_excluded(mias: tuple) -> None:
    """Labels: bright (> 200), compact (fills > 80% of its box), label-sized components."""
    cases, _ = mias
    labels = 0
    for case in cases:
        count, lab, stats, _ = cv2.connectedComponentsWithStats((case.image > 200).astype(np.uint8))
        for i in range(1, count):
            _, _, w, h, area = stats[i]
            if 150 < area < 3000 and area > 0.8 * w * h and 0.3 < w / h < 3:
                labels += 1
                assert not case.region.mask[lab == i].any(), case.name
    assert labels >= 20


@pytest.mark.realdata
def test_mias_chest_wall_side_matches_laterality(mias: tuple) -> None:
    """Even numbers are left breasts (chest wall on the left), odd numbers right ones."""
    cases, _ = mias
    unknown = 0
    for case in cases:
        expected = ChestWallSide.LEFT if int(case.name[3:]) % 2 == 0 else ChestWallSide.RIGHT
        if case.region.chest_wall is ChestWallSide.UNKNOWN:
            unknown += 1
        else:
            assert case.region.chest_wall is expected, case.name
    assert unknown <= 0.02 * len(cases)


def test_to_grey_is_the_bt601_luma_in_float32() -> None:
    """RGB -> grey is the BT.601 weighted sum (within one float32 step), for float64 input and a
    strided view alike; grey passes through as float32; other shapes are refused."""
    rng = np.random.default_rng(5)
    rgb = rng.random((61, 90, 3))  # float64
    for image in (rgb, rgb[::2, ::3]):
        grey = to_grey(image)
        assert grey.dtype == np.float32 and grey.shape == image.shape[:2]
        np.testing.assert_allclose(grey, image @ BT601.astype(np.float64), rtol=0, atol=2.4e-7)
    plain = rng.random((5, 7)).astype(np.float32)
    np.testing.assert_array_equal(to_grey(plain), plain)
    with pytest.raises(ValueError, match="must be"):
        to_grey(rng.random((5, 7, 4)))
