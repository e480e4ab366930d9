"""Reader for CBIS-DDSM, as published on TCIA (DICOM) and as the Kaggle JPEG re-release.

Lee R. S. et al. "A curated mammography data set for use in computer-aided detection and
diagnosis research", Scientific Data 4:170177 (2017). Four case-description CSVs
(``{mass,calc}_case_description_{train,test}_set.csv``) list one row per abnormality with
pathology, BI-RADS assessment, breast density (``breast_density`` in the mass files,
``breast density`` in the calc files), laterality, view and three file paths whose first
component names a folder: ``Mass-Training_P_00001_LEFT_CC`` (the full mammogram) and
``Mass-Training_P_00001_LEFT_CC_1`` (ROI mask and cropped image of abnormality 1).

The rest of those paths does not match the files of either download, so files are found by the
folder name only (``cbis_ddsm_files``), and the ROI mask is told from the cropped image by
content: the mask has the full image's rows and columns; where none or several candidates have
them, it is the candidate whose pixels are binary. One sample per full mammogram: the ROI masks
of all its abnormalities are merged, and it is malignant if any abnormality is malignant.
A view with both a mass and calcifications is filed twice by the release (a ``Mass-`` and a
``Calc-`` folder); the two stay two samples, and grouping by patient keeps them on one side.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imaging.record import Laterality, ViewPosition
from training.data.cbis_ddsm_files import CbisFiles, DicomFiles, JpegFiles, pick_full, pick_mask
from training.data.records import (
    BENIGN,
    MALIGNANT,
    DatasetFormatError,
    DatasetLayoutError,
    Modality,
    Sample,
)

DATASET = "cbis_ddsm"
KINDS = ("mass", "calc")
SUBSETS = ("train", "test")
PATHOLOGIES = {"BENIGN": BENIGN, "BENIGN_WITHOUT_CALLBACK": BENIGN, "MALIGNANT": MALIGNANT}
_LATERALITY = {"LEFT": Laterality.LEFT, "RIGHT": Laterality.RIGHT}
_VIEW = {"CC": ViewPosition.CC, "MLO": ViewPosition.MLO}
_DESCRIPTORS = ("mass shape", "mass margins", "calc type", "calc distribution")


def case_file(kind: str, subset: str) -> str:
    """File name of a case-description CSV, e.g. ``mass_case_description_train_set.csv``."""
    return f"{kind}_case_description_{subset}_set.csv"


@dataclass(frozen=True)
class CaseRow:
    """One abnormality row of a case-description CSV."""

    kind: str  # mass | calc
    subset: str  # train | test (the release's official split)
    patient_id: str
    density: int | None
    laterality: Laterality
    view: ViewPosition
    abnormality_id: int
    abnormality_type: str
    assessment: int
    pathology: str
    subtlety: int | None
    image_ref: str
    roi_ref: str
    crop_ref: str
    descriptors: dict[str, str] = field(default_factory=dict)

    @property
    def image_folder(self) -> str:
        """``<Mass|Calc>-<Training|Test>_<patient>_<LEFT|RIGHT>_<CC|MLO>``, the release's name."""
        prefix = "Mass" if self.kind == "mass" else "Calc"
        subset = "Training" if self.subset == "train" else "Test"
        side = "LEFT" if self.laterality is Laterality.LEFT else "RIGHT"
        return f"{prefix}-{subset}_{self.patient_id}_{side}_{self.view.value}"


def detect_layout(root: Path) -> str:
    """``"jpeg"`` where ``root/csv/dicom_info.csv`` exists, ``"dicom"`` where ``root/CBIS-DDSM``."""
    root = Path(root)
    if (root / "csv" / "dicom_info.csv").is_file():
        return "jpeg"
    if (root / "CBIS-DDSM").is_dir():
        return "dicom"
    raise DatasetLayoutError(
        f"CBIS-DDSM layout not found under {root}: expected {root / 'CBIS-DDSM'}/ with the TCIA "
        f"DICOM folders and the case CSVs beside it, or {root / 'csv' / 'dicom_info.csv'} and "
        f"{root / 'jpeg'}/ of the JPEG re-release",
        dataset=DATASET,
        path=str(root),
    )


def read_cbis_ddsm(
    root: Path,
    *,
    layout: str = "auto",
    kinds: tuple[str, ...] = KINDS,
    subsets: tuple[str, ...] = SUBSETS,
) -> list[Sample]:
    """One sample per full mammogram, sorted by id (the image folder name).

    Args:
        root: for ``dicom``, the folder holding ``CBIS-DDSM/`` and the four CSVs; for ``jpeg``,
            the folder holding ``csv/`` (dicom_info.csv and the four CSVs) and ``jpeg/``.
        layout: ``dicom``, ``jpeg`` or ``auto`` (``detect_layout``).
        kinds, subsets: which case-description CSVs to read (each one requested must exist).

    Raises:
        DatasetLayoutError: a CSV, folder or file the rows refer to is missing.
        DatasetFormatError: a row with an unknown pathology, side or view, or no ROI mask.
    """
    root = Path(root)
    layout = detect_layout(root) if layout == "auto" else layout
    files: CbisFiles
    if layout == "dicom":
        files, csv_dir = DicomFiles(root), root
    elif layout == "jpeg":
        files, csv_dir = JpegFiles(root), root / "csv"
    else:
        raise DatasetLayoutError(f"unknown CBIS-DDSM layout {layout!r}: use dicom, jpeg or auto")
    rows = [row for k in kinds for s in subsets for row in read_case_csv(csv_dir, k, s)]
    by_image: dict[str, list[CaseRow]] = defaultdict(list)
    for row in rows:
        by_image[row.image_folder].append(row)
    return [_sample(files, name, group, layout) for name, group in sorted(by_image.items())]


def read_case_csv(folder: Path, kind: str, subset: str) -> list[CaseRow]:
    """Rows of one case-description CSV (header names trimmed and lower-cased)."""
    if kind not in KINDS or subset not in SUBSETS:
        raise DatasetLayoutError(f"CBIS-DDSM has kinds {KINDS} and subsets {SUBSETS}")
    path = folder / case_file(kind, subset)
    if not path.is_file():
        raise DatasetLayoutError(
            f"missing {path}: CBIS-DDSM's case-description CSV for {kind} {subset}",
            dataset=DATASET,
            path=str(path),
        )
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        reader.fieldnames = [name.strip().lower() for name in reader.fieldnames or []]
        return [_parse_row(raw, kind, subset, path, n) for n, raw in enumerate(reader, start=2)]


def _parse_row(raw: dict[str, Any], kind: str, subset: str, path: Path, line: int) -> CaseRow:
    def get(*names: str) -> str:
        for name in names:
            value = raw.get(name)
            if value is not None and value.strip():
                return value.strip()
        return ""

    def fail(rule: str) -> DatasetFormatError:
        return DatasetFormatError(f"{path}:{line}: {rule}", dataset=DATASET, path=str(path))

    pathology = get("pathology").upper()
    side, view = get("left or right breast").upper(), get("image view").upper()
    if pathology not in PATHOLOGIES:
        raise fail(f"pathology {pathology!r} is not one of {sorted(PATHOLOGIES)}")
    if side not in _LATERALITY or view not in _VIEW:
        raise fail(f"side {side!r} / view {view!r}: expected LEFT|RIGHT and CC|MLO")
    if not get("patient_id") or not get("image file path") or not get("roi mask file path"):
        raise fail("patient_id, 'image file path' and 'ROI mask file path' are required")
    try:
        density = get("breast_density", "breast density")
        subtlety = get("subtlety")
        return CaseRow(
            kind=kind,
            subset=subset,
            patient_id=get("patient_id"),
            density=int(density) if density else None,
            laterality=_LATERALITY[side],
            view=_VIEW[view],
            abnormality_id=int(get("abnormality id") or 1),
            abnormality_type=get("abnormality type"),
            assessment=int(get("assessment")),
            pathology=pathology,
            subtlety=int(subtlety) if subtlety else None,
            image_ref=_clean(get("image file path")),
            roi_ref=_clean(get("roi mask file path")),
            crop_ref=_clean(get("cropped image file path")),
            descriptors={name: get(name) for name in _DESCRIPTORS if get(name)},
        )
    except ValueError as error:
        raise fail(f"a number was expected: {error}") from None


def _clean(path: str) -> str:
    """Paths as listed, without the stray line breaks and backslashes some rows carry."""
    return path.strip().replace("\\", "/")


def _sample(files: CbisFiles, image_folder: str, rows: list[CaseRow], layout: str) -> Sample:
    first = rows[0]
    full = pick_full(files, first.image_ref, image_folder)
    full_shape = files.shape(full)
    masks: list[Path] = []
    abnormalities: list[dict[str, Any]] = []
    seen: set[str] = set()
    for row in sorted(rows, key=lambda r: r.abnormality_id):
        mask, crop = pick_mask(files, (row.roi_ref, row.crop_ref), full_shape)
        if str(mask) in seen:
            continue  # the release lists a few abnormalities twice
        seen.add(str(mask))
        masks.append(mask)
        abnormalities.append(_abnormality(row, crop))
    malignant = any(PATHOLOGIES[row.pathology] == MALIGNANT for row in rows)
    return Sample(
        id=image_folder,
        dataset=DATASET,
        image_path=full,
        label=MALIGNANT if malignant else BENIGN,
        class_name="malignant" if malignant else "benign",
        modality=Modality.MG,
        mask_paths=tuple(masks),
        patient_id=first.patient_id,
        laterality=first.laterality,
        view=first.view,
        extra={
            "bi_rads": max(row.assessment for row in rows),
            "breast_density": first.density,
            "abnormality_type": "mass" if first.kind == "mass" else "calcification",
            "official_split": first.subset,
            "abnormalities": abnormalities,
            "layout": layout,
        },
    )


def _abnormality(row: CaseRow, crop: Path | None) -> dict[str, Any]:
    return {
        "id": row.abnormality_id,
        "type": row.abnormality_type,
        "pathology": row.pathology,
        "assessment": row.assessment,
        "subtlety": row.subtlety,
        "cropped_path": str(crop) if crop else None,
        **row.descriptors,
    }
