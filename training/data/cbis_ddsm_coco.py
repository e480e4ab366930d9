"""Reader for CBIS-DDSM masses as COCO boxes on 800 x 800 JPEGs (``../shared/data/cbis-ddsm-mass``).

Layout: ``<split>/*.jpg`` with ``<split>/_annotations.coco.json`` (COCO: ``images`` with
``file_name``, ``height``, ``width``; ``annotations`` with ``image_id`` and ``bbox`` = x, y, w, h
in pixels of the stored image), ``labels_image_level.csv`` beside the split folders (one row per
image: ``split, file, patient_id, side, view, n_boxes, pathologies, image_label,
max_assessment, breast_density``) and, optionally, CBIS-DDSM's per-mass CSVs
``mass_case_description_<split>_set.csv`` (pathology, BI-RADS assessment, density, shape,
margins, subtlety per mass), joined to the image by patient, side and view.

Facts of this copy that the code relies on:
- films were scaled to 800 x 800 WITHOUT keeping the aspect ratio (portrait films of about
  1:1.6 squashed vertically). A box drawn on the stored grid is still exact: an axis-aligned
  scaling maps a box to a box and the ellipse inscribed in it to the ellipse inscribed in the
  image of the box, so the training target (``dataset.draw_box_ellipse``) is drawn on the stored
  grid and moved by the preprocessing geometry like any mask.
- boxes only, no outlines; every image holds at least one mass (no normal film).
- for a film with several masses the box order need not follow the CSV's order: per-mass
  pathology is kept as a list beside the boxes, never paired with a box.

One sample per image, ``id`` = the file stem (``00001_LEFT_CC``), grouped by ``patient_id`` so a
patient's films stay on one side of a split. ``extra["boxes"]`` holds ``[x, y, w, h]`` per box
and ``extra["box_grid"]`` the ``[height, width]`` of the grid they refer to.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from imaging.record import Laterality, ViewPosition
from training.data.cbis_ddsm import DATASET  # one data set, whichever copy it is read from
from training.data.cbis_ddsm_files import read_table
from training.data.records import (
    BENIGN,
    MALIGNANT,
    DatasetFormatError,
    DatasetLayoutError,
    Modality,
    Sample,
)

COCO_FILE = "_annotations.coco.json"
LABELS_FILE = "labels_image_level.csv"
SPLIT_FOLDERS = ("train", "valid", "test")
LABEL_COLUMNS = ("file", "patient_id", "side", "view", "image_label")
_LABELS = {"malignant": MALIGNANT, "benign": BENIGN}
_LATERALITY = {"LEFT": Laterality.LEFT, "RIGHT": Laterality.RIGHT}
_VIEW = {"CC": ViewPosition.CC, "MLO": ViewPosition.MLO}
_MASS_FIELDS = {
    "abnormality id": "id",
    "pathology": "pathology",
    "assessment": "assessment",
    "breast_density": "breast_density",
    "mass shape": "shape",
    "mass margins": "margins",
    "subtlety": "subtlety",
}


def find_coco_folders(root: Path) -> list[Path]:
    """The folders holding ``_annotations.coco.json``: ``root`` itself or its split folders."""
    root = Path(root)
    if (root / COCO_FILE).is_file():
        return [root]
    found = [root / name for name in SPLIT_FOLDERS if (root / name / COCO_FILE).is_file()]
    if not found:
        raise DatasetLayoutError(
            f"CBIS-DDSM COCO layout not found: expected {root / 'train' / COCO_FILE} (or "
            f"{root / COCO_FILE}) beside the JPEG films",
            dataset=DATASET,
            path=str(root),
        )
    return found


def read_cbis_coco(root: Path) -> list[Sample]:
    """Every film of every split folder under ``root``, sorted by id.

    Raises:
        DatasetLayoutError: the COCO file, ``labels_image_level.csv`` or a listed film is missing.
        DatasetFormatError: a malformed COCO object or box, a film without a label row, a label
            row that disagrees with the COCO file on the number of boxes, an unknown side, view
            or label.
    """
    root = Path(root)
    samples: list[Sample] = []
    for folder in find_coco_folders(root):
        labels = read_image_labels(folder)
        masses = read_mass_rows(root, "test" if folder.name == "test" else "train")
        samples += _read_folder(folder, labels, masses)
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise DatasetFormatError(
            f"film {repeated[0]!r} is listed in two split folders", dataset=DATASET
        )
    return sorted(samples, key=lambda s: s.id)


def read_image_labels(folder: Path) -> dict[str, dict[str, str]]:
    """``labels_image_level.csv`` rows by file name, from ``folder`` or its parent."""
    for path in (folder / LABELS_FILE, folder.parent / LABELS_FILE):
        if path.is_file():
            rows = read_table(path, LABEL_COLUMNS)
            return {row["file"].strip(): row for row in rows if row.get("file")}
    raise DatasetLayoutError(
        f"missing {folder.parent / LABELS_FILE}: the per-image labels of the CBIS-DDSM films",
        dataset=DATASET,
        path=str(folder.parent / LABELS_FILE),
    )


def read_mass_rows(
    root: Path, subset: str
) -> dict[tuple[str, str, str], list[dict[str, str | int | None]]]:
    """``root/mass_case_description_<subset>_set.csv`` as ``(patient, side, view) -> [mass]``;
    empty when absent (optional: the image-level CSV already holds label and assessment)."""
    path = Path(root) / f"mass_case_description_{subset}_set.csv"
    out: dict[tuple[str, str, str], list[dict[str, str | int | None]]] = defaultdict(list)
    if not path.is_file():
        return out
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        reader.fieldnames = [name.strip().lower() for name in reader.fieldnames or []]
        for line, row in enumerate(reader, start=2):
            key = (
                (row.get("patient_id") or "").strip(),
                (row.get("left or right breast") or "").strip().upper(),
                (row.get("image view") or "").strip().upper(),
            )
            if not all(key):
                raise DatasetFormatError(
                    f"{path}:{line}: patient_id, side and view are required",
                    dataset=DATASET,
                    path=str(path),
                )
            out[key].append({new: _number(row.get(old)) for old, new in _MASS_FIELDS.items()})
    return out


def _number(value: str | None) -> str | int | None:
    text = (value or "").strip()
    if not text:
        return None
    return int(text) if text.isdigit() else text


def _read_folder(
    folder: Path,
    labels: dict[str, dict[str, str]],
    masses: dict[tuple[str, str, str], list[dict[str, str | int | None]]],
) -> list[Sample]:
    path = folder / COCO_FILE
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
        images = {int(i["id"]): i for i in coco["images"]}
        boxes: dict[int, list[list[float]]] = defaultdict(list)
        for ann in coco["annotations"]:
            boxes[int(ann["image_id"])].append([float(v) for v in ann["bbox"]])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DatasetFormatError(
            f"{path} is not a COCO annotation file: {error}", dataset=DATASET, path=str(path)
        ) from None
    unknown = sorted(set(boxes) - set(images))
    if unknown:
        raise DatasetFormatError(
            f"{path}: a box refers to image id {unknown[0]}, which the file does not list",
            dataset=DATASET,
            path=str(path),
        )
    return [
        _sample(folder, image, boxes.get(key, []), labels, masses)
        for key, image in sorted(images.items())
    ]


def _sample(
    folder: Path,
    image: dict[str, Any],
    boxes: list[list[float]],
    labels: dict[str, dict[str, str]],
    masses: dict[tuple[str, str, str], list[dict[str, str | int | None]]],
) -> Sample:
    name = str(image.get("file_name", ""))
    film = folder / name

    def fail(rule: str) -> DatasetFormatError:
        return DatasetFormatError(f"{film}: {rule}", dataset=DATASET, path=str(film))

    if not film.is_file():
        raise DatasetLayoutError(
            f"{folder / COCO_FILE} lists {name!r} but {film} is missing",
            dataset=DATASET,
            path=str(film),
        )
    row = labels.get(name)
    if row is None:
        raise fail(f"no row for {name!r} in {LABELS_FILE}")
    side, view = row["side"].strip().upper(), row["view"].strip().upper()
    label = _LABELS.get(row["image_label"].strip().lower())
    if side not in _LATERALITY or view not in _VIEW or label is None:
        raise fail(f"side {side!r}, view {view!r}, label {row['image_label']!r} not understood")
    grid = (int(image["height"]), int(image["width"]))
    for x, y, w, h in boxes:
        if w <= 0 or h <= 0 or x < -1 or y < -1 or x + w > grid[1] + 1 or y + h > grid[0] + 1:
            raise fail(f"box {[x, y, w, h]} is empty or outside the {grid[1]}x{grid[0]} image")
    if row.get("n_boxes", "").strip() and int(row["n_boxes"]) != len(boxes):
        raise fail(f"{LABELS_FILE} says {row['n_boxes']} boxes, the COCO file has {len(boxes)}")
    patient = row["patient_id"].strip()
    own = masses.get((patient, side, view), [])
    return Sample(
        id=Path(name).stem,
        dataset=DATASET,
        image_path=film,
        label=label,
        class_name="malignant" if label == MALIGNANT else "benign",
        modality=Modality.MG,
        patient_id=patient,
        laterality=_LATERALITY[side],
        view=_VIEW[view],
        extra={
            "boxes": [[round(v, 3) for v in box] for box in boxes],
            "box_grid": list(grid),
            "bi_rads": _number(row.get("max_assessment")),
            "breast_density": _number(row.get("breast_density")),
            "abnormality_type": "mass",
            "official_split": (row.get("split") or folder.name).strip(),
            "abnormalities": own,
            "layout": "coco",
        },
    )
