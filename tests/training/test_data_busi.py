"""BUSI reader: the synthetic release layout, layout errors, and the real development copy."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from training.data.busi import read_busi
from training.data.dataset import load_sample
from training.data.records import (
    BENIGN,
    MALIGNANT,
    DatasetFormatError,
    DatasetLayoutError,
    Modality,
)
from training.data.synthetic import make_busi


@pytest.fixture(scope="module")
def busi_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_busi(tmp_path_factory.mktemp("busi"), n=12, seed=3)


@pytest.fixture
def busi_copy(busi_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(busi_root, tmp_path / busi_root.name))


def test_reads_every_image_sorted_by_class_and_number(busi_root: Path) -> None:
    samples = read_busi(busi_root)
    # n=12: 6 benign, 4 malignant, 2 normal originals, plus 3 crops of lesion images
    counts = Counter(s.class_name for s in samples)
    assert counts["normal"] == 2 and counts["benign"] + counts["malignant"] == 13
    keys = [(s.class_name, s.extra["number"]) for s in samples]
    assert keys == sorted(keys, key=lambda k: (["benign", "malignant", "normal"].index(k[0]), k[1]))
    assert all(s.label == (MALIGNANT if s.class_name == "malignant" else BENIGN) for s in samples)
    assert all(s.modality is Modality.US and s.patient_id is None for s in samples)
    assert all(s.group_id == f"image:{s.id}" for s in samples)
    assert samples[0].id == "benign (1)"
    assert samples[0].image_path.name == "benign (1).png"


def test_accepts_the_release_folder_or_its_parent(busi_root: Path) -> None:
    assert read_busi(busi_root.parent) == read_busi(busi_root)


def test_several_lesion_masks_are_merged_by_or(busi_root: Path) -> None:
    sample = next(s for s in read_busi(busi_root) if len(s.mask_paths) == 2)
    assert [p.name for p in sample.mask_paths] == [
        f"{sample.id}_mask.png",
        f"{sample.id}_mask_1.png",
    ]
    image, mask = load_sample(sample)
    parts = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 0 for p in sample.mask_paths]
    assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
    assert np.array_equal(mask.astype(bool), parts[0] | parts[1])
    assert mask.sum() > max(part.sum() for part in parts)


def test_normal_images_have_empty_masks_and_colour_images_three_channels(busi_root: Path) -> None:
    samples = read_busi(busi_root)
    for sample in (s for s in samples if s.class_name == "normal"):
        assert load_sample(sample)[1].sum() == 0
    channels = {load_sample(s)[0].shape[2] for s in samples}
    assert channels == {1, 3}  # every fifth synthetic image is stored RGB


def test_missing_mask_names_the_expected_file(busi_copy: Path) -> None:
    (busi_copy / "malignant" / "malignant (2)_mask.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"malignant \(2\)_mask\.png") as error:
        read_busi(busi_copy)
    assert error.value.code == "dataset_layout"


def test_missing_class_folder_is_named(busi_copy: Path) -> None:
    shutil.rmtree(busi_copy / "normal")
    with pytest.raises(DatasetLayoutError, match="normal"):
        read_busi(busi_copy)


def test_unexpected_or_orphan_files_are_rejected(busi_copy: Path) -> None:
    (busi_copy / "benign" / ".DS_Store").write_bytes(b"ignored")
    (busi_copy / "benign" / "notes.txt").write_text("ignored: not a PNG")
    read_busi(busi_copy)
    shutil.copy(busi_copy / "benign" / "benign (1).png", busi_copy / "benign" / "scan 7.png")
    with pytest.raises(DatasetFormatError, match=r"scan 7\.png"):
        read_busi(busi_copy)
    (busi_copy / "benign" / "scan 7.png").unlink()
    (busi_copy / "benign" / "benign (1).png").unlink()
    with pytest.raises(DatasetFormatError, match=r"mask without image"):
        read_busi(busi_copy)


@pytest.mark.realdata
def test_real_busi_counts_and_merged_masks(shared_data: Path) -> None:
    root = shared_data / "busi"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    samples = read_busi(root)
    assert len(samples) == 596
    counts = Counter(s.class_name for s in samples)
    assert counts == {"benign": 318, "malignant": 166, "normal": 112}
    multi = {s.id: s for s in samples if len(s.mask_paths) > 1}
    assert len(multi) == 16 and len(multi["benign (195)"].mask_paths) == 3
    for sample in multi.values():
        image, mask = load_sample(sample)
        parts = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 127 for p in sample.mask_paths]
        assert mask.shape == image.shape[:2]
        assert np.array_equal(mask.astype(bool), np.logical_or.reduce(parts))
    normal = next(s for s in samples if s.class_name == "normal")
    assert load_sample(normal)[1].sum() == 0
