"""The generic hospital format: one CSV table naming the images and what is known about them.

Columns (only ``image`` is required; the header names them, in any order):

- ``image``: the image file (DICOM, PNG, JPEG, TIFF...), relative to the CSV's folder or absolute;
- ``mask``: a lesion mask file (non-zero = lesion; an empty mask = no lesion); several files
  separated by ``;`` are merged; empty: no mask;
- ``label``: ``1``/``malignant`` or ``0``/``benign``/``normal``; empty: unknown;
- ``patient``: the patient (bootstrap intervals resample patients);
- ``boxes``: lesion boxes as ``x y w h`` in pixels, boxes separated by ``;``; ``none`` (or
  ``[]``): the image holds no lesion; empty: not given.

The table is the one ``*.csv`` in the data folder that has an ``image`` column (several: name
it ``cases.csv``). A missing or unreadable file is not an error here: the evaluation skips that
case with a message naming the file.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

from breastdx.errors import BreastdxError
from evaluation.cases import Case

PREFERRED = "cases.csv"
LABELS = {"1": 1, "malignant": 1, "0": 0, "benign": 0, "normal": 0}


class CaseTableError(BreastdxError):
    """A row of the hospital CSV breaks the format's rules (the message names the row)."""

    code = "case_table_invalid"
    title = "Case table not understood"
    http_status = 422


def _header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return [name.strip().lower() for name in next(csv.reader(handle), [])]
    except (OSError, UnicodeDecodeError):
        return []


def find_table(root: Path) -> Path | None:
    """The case table of ``root``: ``cases.csv``, else the only CSV with an ``image`` column."""
    if (root / PREFERRED).is_file() and "image" in _header(root / PREFERRED):
        return root / PREFERRED
    tables = [p for p in sorted(root.glob("*.csv")) if "image" in _header(p)]
    return tables[0] if len(tables) == 1 else None


def read_table(root: Path) -> list[Case]:
    """Every row of the case table as a case, in table order."""
    table = find_table(root)
    if table is None:
        raise CaseTableError(f"no case table in {root}: a CSV with an 'image' column")
    with table.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        reader.fieldnames = [name.strip().lower() for name in reader.fieldnames or []]
        rows = list(reader)
    cases, seen = [], set()
    for line, row in enumerate(rows, start=2):
        case = _case(table, row, line)
        if case.id in seen:
            raise CaseTableError(f"{table.name} line {line}: image {case.id!r} is listed twice")
        seen.add(case.id)
        cases.append(case)
    return cases


def _path(table: Path, text: str) -> Path:
    path = Path(text.strip())
    return path if path.is_absolute() else table.parent / path


def _case(table: Path, row: dict[str, str], line: int) -> Case:
    image = (row.get("image") or "").strip()
    if not image:
        raise CaseTableError(f"{table.name} line {line}: the image column is empty")
    label_text = (row.get("label") or "").strip().lower()
    if label_text and label_text not in LABELS:
        raise CaseTableError(
            f"{table.name} line {line}: label {label_text!r}; use 1/malignant or "
            "0/benign/normal, or leave it empty"
        )
    masks = tuple(_path(table, m) for m in (row.get("mask") or "").split(";") if m.strip())
    boxes, no_lesion = _boxes(table, (row.get("boxes") or "").strip(), line)
    has_lesion: bool | None = None
    truth: Literal["mask", "boxes", "none"] = "none"
    if masks:
        has_lesion, truth = True, "mask"  # has_lesion: decided from the mask's pixels
    elif boxes or no_lesion:
        has_lesion, truth = bool(boxes), "boxes"
    return Case(
        id=image,
        dataset="csv",
        image_path=_path(table, image),
        label=LABELS[label_text] if label_text else None,
        patient=(row.get("patient") or "").strip() or None,
        mask_paths=masks,
        boxes=boxes,
        has_lesion=has_lesion,
        truth=truth,
    )


def _boxes(
    table: Path, text: str, line: int
) -> tuple[tuple[tuple[float, float, float, float], ...], bool]:
    """``(boxes, says_no_lesion)`` of a ``boxes`` cell."""
    if text.lower() in ("none", "[]"):
        return (), True
    boxes = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        try:
            x, y, w, h = (float(v) for v in part.replace(",", " ").split())
        except ValueError:
            raise CaseTableError(
                f"{table.name} line {line}: box {part!r} is not 'x y w h' in pixels"
            ) from None
        if w <= 0 or h <= 0:
            raise CaseTableError(f"{table.name} line {line}: box {part!r} has no area")
        boxes.append((x, y, w, h))
    return tuple(boxes), False
