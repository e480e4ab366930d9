"""IDC reader: names parsed and checked against folders, synthetic and real copies."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from training.data.dataset import load_sample
from training.data.idc import parse_name, read_idc
from training.data.records import DatasetFormatError, DatasetLayoutError, Modality
from training.data.synthetic import make_idc


@pytest.fixture(scope="module")
def idc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_idc(tmp_path_factory.mktemp("idc"), n=48, seed=1, patients=4)


@pytest.fixture
def idc_copy(idc_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(idc_root, tmp_path / idc_root.name))


def test_parse_name() -> None:
    assert parse_name("10253_idx5_x1351_y1101_class0.png") == ("10253", 1351, 1101, 0)
    for bad in ("10253_idx5_x1351_y1101_class2.png", "10253_x1_y1_class0.png", "a.png"):
        with pytest.raises(DatasetFormatError, match="does not follow"):
            parse_name(bad)


def test_reads_patches_with_patient_position_and_class(idc_root: Path) -> None:
    samples = read_idc(idc_root)
    assert len(samples) == 48
    assert Counter(s.patient_id for s in samples) == dict.fromkeys(
        ["10250", "10253", "10256", "10259"], 12
    )
    for sample in samples:
        patient, x, y, label = parse_name(sample.image_path.name)
        assert (sample.patient_id, sample.extra["x"], sample.extra["y"]) == (patient, x, y)
        assert sample.label == label == int(sample.image_path.parent.name)
        assert sample.class_name == ("idc" if label else "non_idc")
        assert sample.group_id == f"patient:{patient}" and sample.modality is Modality.SM
    assert not any(s.label for s in samples if s.patient_id == "10259")  # no tumour
    keys = [(int(s.patient_id or 0), s.label, s.extra["y"], s.extra["x"]) for s in samples]
    assert keys == sorted(keys)
    assert read_idc(idc_root.parent) == samples


def test_patches_load_as_rgb_with_an_empty_mask(idc_root: Path) -> None:
    samples = read_idc(idc_root)
    shapes = {load_sample(s)[0].shape for s in samples if s.patient_id == "10250"}
    assert shapes == {(50, 50, 3), (50, 36, 3)}  # edge patches are cut short, as in the release
    image, mask = load_sample(samples[0])
    assert mask.shape == image.shape[:2] and not mask.any()
    assert not samples[0].segmentable


def test_class_in_name_must_match_folder(idc_copy: Path) -> None:
    source = next((idc_copy / "10250" / "1").iterdir())
    source.rename(idc_copy / "10250" / "0" / source.name)
    with pytest.raises(DatasetFormatError, match=r"class 1 but the file lies in 10250/0/"):
        read_idc(idc_copy)


def test_patient_in_name_must_match_folder(idc_copy: Path) -> None:
    source = next((idc_copy / "10253" / "0").iterdir())
    source.rename(idc_copy / "10250" / "0" / source.name)
    with pytest.raises(DatasetFormatError, match="patient 10253"):
        read_idc(idc_copy)


def test_bad_layouts(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="IDC_regular_ps50_idx5"):
        read_idc(tmp_path)
    (tmp_path / "IDC_regular_ps50_idx5" / "10250" / "x").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="neither '0' nor '1'"):
        read_idc(tmp_path)


@pytest.mark.realdata
def test_real_idc_patients_and_classes(shared_data: Path) -> None:
    root = shared_data / "idc"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    samples = read_idc(root)
    assert len(samples) == 6768
    assert len({s.patient_id for s in samples}) == 190
    assert Counter(s.label for s in samples) == {0: 4992, 1: 1776}
    with_tumour = {s.patient_id for s in samples if s.label == 1}
    assert len(with_tumour) == 181
    sizes = Counter(_size(s.image_path) for s in samples)
    assert sizes.most_common(1)[0][0] == (50, 50)
    assert all(w <= 50 and h <= 50 for w, h in sizes) and len(sizes) > 1  # a few edge patches
    assert load_sample(samples[0])[0].shape == (*_size(samples[0].image_path)[::-1], 3)


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:  # header only
        return image.size
