"""The ``Sample`` record and ``load_sample``: shapes, ranges, mask merging and resizing."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from models_registry.card import Stage
from training.data.dataset import load_mask, load_sample
from training.data.records import (
    Circle,
    DatasetFormatError,
    Modality,
    Sample,
)


def _png(path: Path, pixels: np.ndarray) -> Path:
    cv2.imwrite(str(path), pixels)
    return path


def test_sample_validates_and_defaults_its_group(tmp_path: Path) -> None:
    sample = Sample("a", "toy", tmp_path / "a.png", 1, "malignant", Modality.US)
    assert sample.group_id == "image:a" and sample.stage is Stage.ULTRASOUND
    assert Sample("b", "toy", tmp_path, 0, "x", Modality.MG, patient_id="P1").group_id == (
        "patient:P1"
    )
    json.dumps(sample.to_dict())
    with pytest.raises(DatasetFormatError, match="label must be 0 or 1"):
        Sample("a", "toy", tmp_path, 2, "x", Modality.SM)
    with pytest.raises(DatasetFormatError, match="must not be empty"):
        Sample("", "toy", tmp_path, 0, "x", Modality.SM)


def test_grey_and_sixteen_bit_images_load_in_unit_range(tmp_path: Path) -> None:
    deep = np.linspace(0, 40000, 30 * 20).reshape(30, 20).astype(np.uint16)
    sample = Sample("a", "toy", _png(tmp_path / "a.png", deep), 0, "x", Modality.MG)
    image, mask = load_sample(sample)
    assert image.shape == (30, 20, 1) and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() > image.min()
    assert mask.shape == (30, 20) and mask.dtype == np.uint8 and not mask.any()


def test_colour_is_rgb_not_bgr(tmp_path: Path) -> None:
    bgr = np.zeros((8, 8, 3), np.uint8)
    bgr[..., 2] = 255  # red, as OpenCV writes it
    sample = Sample("a", "toy", _png(tmp_path / "a.png", bgr), 0, "x", Modality.SM)
    image = load_sample(sample)[0]
    assert image.shape == (8, 8, 3) and image[0, 0].tolist() == [1.0, 0.0, 0.0]


def test_masks_merge_resize_and_accept_zero_one_values(tmp_path: Path) -> None:
    image = _png(tmp_path / "i.png", np.zeros((40, 60), np.uint8))
    left = np.zeros((40, 60), np.uint8)
    left[10:20, 5:15] = 255
    ones = np.zeros((20, 30), np.uint8)  # half size, values 0/1
    ones[5:10, 20:25] = 1
    paths = (_png(tmp_path / "m0.png", left), _png(tmp_path / "m1.png", ones))
    sample = Sample("a", "toy", image, 0, "x", Modality.US, mask_paths=paths)
    mask = load_sample(sample)[1]
    assert set(np.unique(mask)) == {0, 1}
    assert mask[10:20, 5:15].all() and mask[10:20, 40:50].all()
    assert mask.sum() == 100 + 100


def test_circles_are_drawn_on_the_image_grid(tmp_path: Path) -> None:
    circle = Circle(100.0, 100.0, 20.0, (200, 200))
    sample = Sample("a", "toy", tmp_path / "unused", 0, "x", Modality.MG, circles=(circle,))
    mask = load_mask(sample, (50, 50))
    ys, xs = np.nonzero(mask)
    assert (xs.mean(), ys.mean()) == (pytest.approx(25, abs=0.5), pytest.approx(25, abs=0.5))
    assert mask.sum() == pytest.approx(np.pi * 5**2, rel=0.2)
