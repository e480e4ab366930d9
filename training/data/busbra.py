"""Reader for BUS-BRA, the Brazilian breast ultrasound data set.

Gómez-Flores W., Gregorio-Calas M.J., Coelho de Albuquerque Pereira W. "BUS-BRA: A breast
ultrasound dataset for assessing computer-aided diagnosis systems", Medical Physics 51(4):3110-3123
(2024). Layout: ``Images/bus_NNNN-{l,r,s}.png`` with ``Masks/mask_NNNN-{l,r,s}.png`` (one lesion
mask per image) and ``bus_data.csv`` (ID, Case = patient, Histology, Pathology (biopsy-proven
benign/malignant), BIRADS, Device, Width, Height, Side, BBOX). The ``-l``/``-r`` images of a case
are two views of one lesion, so a case (patient) is the group a split keeps on one side.
"""

from __future__ import annotations

import csv
from pathlib import Path

from training.data.records import (
    BENIGN,
    MALIGNANT,
    DatasetFormatError,
    DatasetLayoutError,
    Modality,
    Sample,
)

DATASET = "busbra"
TABLE = "bus_data.csv"
PATHOLOGY = {"benign": BENIGN, "malignant": MALIGNANT}
REQUIRED_COLUMNS = ("ID", "Case", "Pathology")


def find_root(root: Path) -> Path:
    """The folder holding ``Images/``, ``Masks/`` and ``bus_data.csv`` (``root`` or a child)."""
    root = Path(root)
    for candidate in (root, root / "busbra", root / "BUSBRA"):
        if (candidate / TABLE).is_file() and (candidate / "Images").is_dir():
            return candidate
    raise DatasetLayoutError(
        f"BUS-BRA layout not found under {root}: expected {TABLE}, Images/ and Masks/",
        dataset=DATASET,
        path=str(root),
    )


def read_busbra(root: Path, *, strict: bool = True) -> list[Sample]:
    """Every image of ``bus_data.csv`` with its mask, in the table's (ID) order.

    ``strict=False`` (evaluation) keeps a row whose image or mask file is missing, naming the
    expected files, so that the caller can skip and count that case instead of failing the set.

    Raises:
        DatasetLayoutError: the table, an image or its mask is missing.
        DatasetFormatError: the table lacks a column or holds an unknown pathology.
    """
    base = find_root(root)
    with (base / TABLE).open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetFormatError(
                f"{base / TABLE} lacks column(s) {missing}", dataset=DATASET, path=str(base / TABLE)
            )
        rows = list(reader)
    return sorted((_sample(base, row, strict) for row in rows), key=lambda s: s.id)


def _sample(base: Path, row: dict[str, str], strict: bool = True) -> Sample:
    image_id = row["ID"].strip()
    pathology = row["Pathology"].strip().lower()
    if pathology not in PATHOLOGY:
        raise DatasetFormatError(
            f"{base / TABLE}: {image_id} has pathology {row['Pathology']!r}; expected "
            "benign or malignant",
            dataset=DATASET,
            path=str(base / TABLE),
        )
    image = base / "Images" / f"{image_id}.png"
    mask = base / "Masks" / f"{image_id.replace('bus_', 'mask_', 1)}.png"
    for path in (image, mask):
        if strict and not path.is_file():
            raise DatasetLayoutError(
                f"missing file {path} listed in {TABLE}", dataset=DATASET, path=str(path)
            )
    return Sample(
        id=image_id,
        dataset=DATASET,
        image_path=image,
        label=PATHOLOGY[pathology],
        class_name=pathology,
        modality=Modality.US,
        mask_paths=(mask,),
        patient_id=f"busbra-{row['Case'].strip()}",
        extra={
            "birads": row.get("BIRADS", "").strip() or None,
            "device": row.get("Device", "").strip() or None,
            "side": row.get("Side", "").strip() or None,
            "histology": row.get("Histology", "").strip() or None,
            "lesions": 1,
        },
    )
