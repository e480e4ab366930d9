"""CBIS-DDSM readers: the TCIA (DICOM) and Kaggle (JPEG) layouts on synthetic copies carrying the
release's quirks (``training.data.synthetic_cbis``), and the COCO-box copy of the masses
(``training.data.cbis_ddsm_coco``) on a synthetic copy and on the real one in ../shared/data,
with its box-derived training targets (the ellipse inscribed in each box).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from imaging.preprocess import PreprocessConfig, prepare
from imaging.record import Laterality, ViewPosition
from training.data.cbis_ddsm import detect_layout, read_cbis_ddsm
from training.data.cbis_ddsm_coco import read_cbis_coco
from training.data.dataset import draw_box_ellipse, load_mask, load_sample
from training.data.records import (
    BENIGN,
    MALIGNANT,
    DatasetFormatError,
    DatasetLayoutError,
    Modality,
    Sample,
)
from training.data.synthetic import make_cbis_ddsm_dicom, make_cbis_ddsm_jpeg
from training.data.synthetic_cbis import make_cbis_ddsm_coco


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


# --- the COCO copy (../shared/data/cbis-ddsm-mass): boxes, image labels, per-mass rows ----------


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cbis_ddsm_coco(tmp_path_factory.mktemp("cbis_coco"), n_patients=6, seed=3)


@pytest.fixture
def coco_copy(coco_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(coco_root, tmp_path / "coco"))


def test_coco_films_joined_with_labels_and_mass_rows(coco_root: Path) -> None:
    samples = read_cbis_coco(coco_root)
    assert [s.id for s in samples] == sorted(s.id for s in samples) and len(samples) == 9
    by_id = {s.id: s for s in samples}
    two = by_id["00001_RIGHT_MLO"]  # two masses, boxes listed in the reverse of the CSV order
    assert (two.patient_id, two.laterality, two.view) == (
        "P_00001",
        Laterality.RIGHT,
        ViewPosition.MLO,
    )
    assert two.group_id == "patient:P_00001" and two.modality is Modality.MG
    assert len(two.extra["boxes"]) == 2 and two.extra["box_grid"] == [160, 160]
    assert sorted(a["pathology"] for a in two.extra["abnormalities"]) == ["BENIGN", "MALIGNANT"]
    assert two.label == MALIGNANT and two.class_name == "malignant"  # any malignant mass
    assert two.extra["official_split"] == "train" and two.extra["layout"] == "coco"
    for sample in samples:
        pathologies = {a["pathology"] for a in sample.extra["abnormalities"]}
        assert sample.label == (MALIGNANT if "MALIGNANT" in pathologies else BENIGN)
        assert len(sample.extra["abnormalities"]) == len(sample.extra["boxes"])
        assert sample.segmentable and sample.extra["bi_rads"] in (3, 4)
    # both films of a patient share the group that keeps them on one side of a split
    assert by_id["00002_LEFT_CC"].group_id == by_id["00002_LEFT_MLO"].group_id


def test_coco_layout_and_format_errors(coco_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="COCO layout not found"):
        read_cbis_coco(tmp_path / "empty")
    coco_file = coco_copy / "train" / "_annotations.coco.json"
    original = json.loads(coco_file.read_text())

    def expect(error: type[Exception], pattern: str, coco: dict) -> None:
        coco_file.write_text(json.dumps(coco))
        with pytest.raises(error, match=pattern):
            read_cbis_coco(coco_copy)

    extra_box = {**original, "annotations": [*original["annotations"], original["annotations"][0]]}
    expect(DatasetFormatError, "says 2 boxes, the COCO file has 3", extra_box)
    outside = json.loads(json.dumps(original))
    outside["annotations"][0]["bbox"] = [150, 10, 40, 10]
    expect(DatasetFormatError, "outside the 160x160 image", outside)
    stray = json.loads(json.dumps(original))
    stray["annotations"][0]["image_id"] = 99
    expect(DatasetFormatError, "image id 99", stray)
    expect(DatasetFormatError, "not a COCO annotation file", {"images": []})
    coco_file.write_text(json.dumps(original))
    (coco_copy / "train" / "00002_LEFT_CC.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match=r"00002_LEFT_CC\.jpg"):
        read_cbis_coco(coco_copy)
    (coco_copy / "labels_image_level.csv").unlink()
    with pytest.raises(DatasetLayoutError, match=r"labels_image_level\.csv"):
        read_cbis_coco(coco_copy)


def test_coco_mass_rows_are_optional(coco_copy: Path) -> None:
    (coco_copy / "mass_case_description_train_set.csv").unlink()
    samples = read_cbis_coco(coco_copy)
    assert len(samples) == 9 and all(s.extra["abnormalities"] == [] for s in samples)


# --- box-derived targets: the ellipse inscribed in each box, moved by the geometry -------------


def test_ellipse_target_lies_inside_its_box_and_fills_it(coco_root: Path) -> None:
    for sample in read_cbis_coco(coco_root):
        image, mask = load_sample(sample)
        assert mask.shape == image.shape[:2] == (160, 160)
        inside = np.zeros_like(mask)
        expected = 0.0
        for x, y, w, h in sample.extra["boxes"]:
            top, left = int(np.floor(y)), int(np.floor(x))
            inside[top : int(np.ceil(y + h)), left : int(np.ceil(x + w))] = 1
            expected += np.pi / 4 * w * h
        assert mask.max() == 1 and not np.any(mask & (1 - inside))  # never outside a box
        assert abs(mask.sum() - expected) / expected < 0.15  # ~ pi/4 of the box areas
        # each box's ellipse touches the middle of all four sides (within a pixel)
        x, y, w, h = sample.extra["boxes"][0]
        rows, cols = np.nonzero(mask[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))])
        assert rows.max() - rows.min() >= h - 2 and cols.max() - cols.min() >= w - 2


def test_ellipse_target_is_exact_on_another_grid() -> None:
    """A box given on the squashed 800 x 800 grid, drawn on a 1280 x 800 (unsquashed) film: the
    target is the ellipse of the scaled box."""
    sample = Sample(
        id="x", dataset="cbis_ddsm", image_path=Path("x.png"), label=0, class_name="benign",
        modality=Modality.MG, extra={"boxes": [[200, 400, 120, 60]], "box_grid": [800, 800]},
    )  # fmt: skip
    mask = load_mask(sample, (1280, 800))
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max() + 1) == pytest.approx((640, 736), abs=1)  # y 400..460 x 1.6
    assert (cols.min(), cols.max() + 1) == pytest.approx((200, 320), abs=1)
    assert mask.sum() == pytest.approx(np.pi / 4 * 120 * 96, rel=0.03)


@pytest.mark.parametrize("resize_mode", ["stretch", "letterbox"])
def test_geometry_moves_the_ellipse_onto_the_moved_box(coco_root: Path, resize_mode: str) -> None:
    """Drawn on the stored film, then breast crop, canonical flip and resize: the moved mask is
    the ellipse inscribed in the box the geometry maps the box to."""
    config = PreprocessConfig(
        input_size=(96, 96), channels=1, resize_mode=resize_mode, crop_breast=True,
        canonical_orientation=True,
    )  # fmt: skip
    flipped = 0
    for sample in read_cbis_coco(coco_root):
        image, mask = load_sample(sample)
        prepared = prepare(image[..., 0], config, laterality=sample.laterality)
        moved = prepared.geometry.apply_mask(mask)
        flipped += any(op.kind == "flip" for op in prepared.geometry.ops)
        redrawn = np.zeros_like(moved)
        for x, y, w, h in sample.extra["boxes"]:
            # continuous corners -> pixel-centre coordinates -> through the geometry -> back
            corners = np.array([[x - 0.5, y - 0.5], [x + w - 0.5, y + h - 0.5]])
            (x0, y0), (x1, y1) = prepared.geometry.map_points(corners, inverse=False) + 0.5
            box = (min(x0, x1), min(y0, y1), abs(x1 - x0), abs(y1 - y0))
            draw_box_ellipse(redrawn, box, moved.shape)
        overlap = np.logical_and(moved, redrawn).sum() / np.logical_or(moved, redrawn).sum()
        assert overlap > 0.8, (sample.id, overlap)
    assert flipped  # some films were mirrored to the canonical orientation


@pytest.mark.realdata
def test_real_cbis_coco_counts_and_committed_split(shared_data: Path) -> None:
    from tests.conftest import REPO_ROOT
    from training.data.splits import Split, verify
    from training.torch_dataset import read_samples

    samples = read_cbis_coco(shared_data / "cbis-ddsm-mass")
    assert len(samples) == 1231 and len({s.patient_id for s in samples}) == 691
    assert sum(len(s.extra["boxes"]) for s in samples) == 1318
    assert sum(len(s.extra["abnormalities"]) for s in samples) == 1318
    assert sum(s.label for s in samples) == 602
    image, mask = load_sample(samples[0])
    assert image.shape[:2] == mask.shape == (800, 800) and np.count_nonzero(mask) > 0
    combined = read_samples("cbis_ddsm_coco+mias", shared_data)
    split = Split.load(REPO_ROOT / "models_registry/store/splits/mammography-cbis-mias.json")
    verify(split, combined)
    # every data set has its own test part; mini-MIAS keeps its committed split
    sides = {e.sample_id: e.split for e in split.entries}
    for dataset in ("cbis_ddsm", "mini_mias"):
        assert {sides[s.id] for s in combined if s.dataset == dataset and s.id in sides} == {
            "train",
            "val",
            "test",
        }
    old = Split.load(REPO_ROOT / "models_registry/store/splits/mammography.json")
    assert all(sides[e.sample_id] == e.split for e in old.entries)
