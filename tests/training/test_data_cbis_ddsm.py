"""CBIS-DDSM reader on the synthetic TCIA (DICOM) and Kaggle (JPEG) layouts.

There is no real CBIS-DDSM in the shared data, so only the synthetic copies are read; they carry
the release's quirks (see ``training.data.synthetic_cbis``).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from imaging.record import Laterality, ViewPosition
from training.data.cbis_ddsm import detect_layout, read_cbis_ddsm
from training.data.dataset import load_sample
from training.data.records import (
    BENIGN,
    MALIGNANT,
    DatasetFormatError,
    DatasetLayoutError,
    Modality,
    Sample,
)
from training.data.synthetic import make_cbis_ddsm_dicom, make_cbis_ddsm_jpeg


@pytest.fixture(scope="module")
def dicom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cbis_ddsm_dicom(tmp_path_factory.mktemp("cbis_dicom"), n=8, seed=4)


@pytest.fixture(scope="module")
def dicom_samples(dicom_root: Path) -> list[Sample]:
    return read_cbis_ddsm(dicom_root)


@pytest.fixture
def dicom_copy(dicom_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(dicom_root, tmp_path / "cbis"))


def test_one_sample_per_mammogram_with_metadata(dicom_root: Path, dicom_samples: list) -> None:
    assert detect_layout(dicom_root) == "dicom"
    assert len(dicom_samples) == 8
    assert [s.id for s in dicom_samples] == sorted(s.id for s in dicom_samples)
    first = next(s for s in dicom_samples if s.id == "Mass-Training_P_00001_LEFT_CC")
    assert (first.patient_id, first.laterality, first.view) == (
        "P_00001",
        Laterality.LEFT,
        ViewPosition.CC,
    )
    assert first.group_id == "patient:P_00001" and first.modality is Modality.MG
    assert first.extra["official_split"] == "train" and first.extra["abnormality_type"] == "mass"
    # density is read from 'breast_density' (mass CSVs) and 'breast density' (calc CSVs)
    assert all(isinstance(s.extra["breast_density"], int) for s in dicom_samples)
    assert {s.id.split("_")[0] for s in dicom_samples} == {
        "Mass-Training",
        "Mass-Test",
        "Calc-Training",
        "Calc-Test",
    }


def test_several_abnormalities_merge_and_malignant_wins(dicom_samples: list[Sample]) -> None:
    multi = [s for s in dicom_samples if len(s.mask_paths) == 2]
    assert multi
    for sample in multi:
        pathologies = [a["pathology"] for a in sample.extra["abnormalities"]]
        assert sample.label == (MALIGNANT if "MALIGNANT" in pathologies else BENIGN)
        assert sample.extra["bi_rads"] == max(
            a["assessment"] for a in sample.extra["abnormalities"]
        )
        mask = load_sample(sample)[1]
        parts = [_single_mask(sample, p) for p in sample.mask_paths]
        assert np.array_equal(mask, parts[0] | parts[1]) and mask.sum() > parts[0].sum()
    assert any(s.label == MALIGNANT and len(s.mask_paths) == 2 for s in multi)


def test_masks_are_told_from_crops_by_content(dicom_samples: list[Sample]) -> None:
    # the synthetic ROI series hold mask and crop as 1-1/1-2 in either order, as TCIA's do
    assert {p.name for s in dicom_samples for p in s.mask_paths} == {"1-1.dcm", "1-2.dcm"}
    for sample in dicom_samples:
        image, mask = load_sample(sample)
        assert image.shape == (192, 128, 1) and image.dtype == np.float32
        assert 0 < mask.sum() < mask.size
        for path, abnormality in zip(sample.mask_paths, sample.extra["abnormalities"], strict=True):
            crop = Path(abnormality["cropped_path"])
            assert crop != path and load_sample(_with_image(sample, crop))[0].shape[0] < 100
        # the lesion (a bright mass or bright specks) is brighter than the rest of the breast
        grey = image[..., 0]
        assert grey[mask > 0].mean() > grey[(mask == 0) & (grey > 0.1)].mean()


@pytest.mark.parametrize("case_paths", ["dicom", "jpeg"])
def test_jpeg_layout_matches_the_dicom_layout(
    tmp_path: Path, dicom_samples: list[Sample], case_paths: str
) -> None:
    root = make_cbis_ddsm_jpeg(tmp_path, n=8, seed=4, case_paths=case_paths)
    assert detect_layout(root) == "jpeg"
    samples = read_cbis_ddsm(root)
    assert [s.id for s in samples] == [s.id for s in dicom_samples]
    for jpeg, dicom in zip(samples, dicom_samples, strict=True):
        assert (jpeg.label, jpeg.patient_id, jpeg.extra["bi_rads"]) == (
            dicom.label,
            dicom.patient_id,
            dicom.extra["bi_rads"],
        )
        mask_jpeg, mask_dicom = load_sample(jpeg)[1], load_sample(dicom)[1]
        overlap = (mask_jpeg & mask_dicom).sum() / (mask_jpeg | mask_dicom).sum()
        assert overlap > 0.95


def test_kinds_and_subsets_can_be_chosen(dicom_root: Path) -> None:
    samples = read_cbis_ddsm(dicom_root, kinds=("mass",), subsets=("test",))
    assert samples and all(s.id.startswith("Mass-Test_") for s in samples)


def test_layout_errors_name_what_is_missing(dicom_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="CBIS-DDSM layout not found"):
        read_cbis_ddsm(tmp_path / "empty")
    (dicom_copy / "calc_case_description_test_set.csv").unlink()
    with pytest.raises(DatasetLayoutError, match=r"calc_case_description_test_set\.csv"):
        read_cbis_ddsm(dicom_copy)
    read_cbis_ddsm(dicom_copy, kinds=("mass",))
    shutil.rmtree(dicom_copy / "CBIS-DDSM" / "Mass-Training_P_00001_LEFT_CC_1")
    with pytest.raises(DatasetLayoutError, match="Mass-Training_P_00001_LEFT_CC_1"):
        read_cbis_ddsm(dicom_copy, kinds=("mass",))


def test_unknown_pathology_is_reported_with_its_line(dicom_copy: Path) -> None:
    path = dicom_copy / "mass_case_description_train_set.csv"
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    rows[1][rows[0].index("pathology")] = "UNCERTAIN"
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    with pytest.raises(DatasetFormatError, match=r"train_set\.csv:2: pathology 'UNCERTAIN'"):
        read_cbis_ddsm(dicom_copy)


def _single_mask(sample: Sample, path: Path) -> np.ndarray:
    return load_sample(Sample(**{**_fields(sample), "mask_paths": (path,)}))[1]


def _with_image(sample: Sample, path: Path) -> Sample:
    return Sample(**{**_fields(sample), "image_path": path, "mask_paths": ()})


def _fields(sample: Sample) -> dict:
    return {name: getattr(sample, name) for name in sample.__dataclass_fields__}
