"""Reader for mini-MIAS, the Mammographic Image Analysis Society mini database.

Suckling J. et al. "The Mammographic Image Analysis Society digital mammogram database",
Exerpta Medica, International Congress Series 1069 (1994) 375-378. ``Info.txt`` lists one row
per image or abnormality: ``mdb001 G CIRC B 535 425 197`` = reference, background tissue
(F/G/D), class (CALC, CIRC, SPIC, MISC, ARCH, ASYM, NORM), severity (B/M, absent for NORM),
centre x, y and radius in pixels. Per the release notes: coordinates refer to the 1024 x 1024
films with the origin at the BOTTOM-left corner; widely distributed calcifications have no
centre and radius; films come in pairs per patient, left = even number, right = odd. The
circles are converted here to a top-left origin in the 1024 grid (``y' = 1024 - y``) and scaled
to the stored image's size when the mask is drawn.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from imaging.record import Laterality, ViewPosition
from training.data.records import (
    BENIGN,
    MALIGNANT,
    Circle,
    DatasetFormatError,
    DatasetLayoutError,
    Modality,
    Sample,
)

logger = logging.getLogger(__name__)

DATASET = "mini_mias"
INFO_FILE = "Info.txt"
GRID = 1024  # the release's films are 1024 x 1024 pixels
TISSUES = {"F": "fatty", "G": "fatty-glandular", "D": "dense-glandular"}
CLASSES = {"CALC", "CIRC", "SPIC", "MISC", "ARCH", "ASYM", "NORM"}
SEVERITIES = {"B": "benign", "M": "malignant"}
IMAGE_SUFFIXES = (".png", ".pgm")

_ROW_RE = re.compile(r"^\s*(mdb\d{3})\s+(\S.*)$")


def find_root(root: Path) -> Path:
    """The folder holding ``Info.txt``: ``root``, ``root/mini-mias`` or ``root/mammography/...``."""
    root = Path(root)
    for candidate in (root, root / "mini-mias", root / "mammography" / "mini-mias"):
        if (candidate / INFO_FILE).is_file():
            return candidate
    raise DatasetLayoutError(
        f"mini-MIAS layout not found: expected {root / INFO_FILE} beside the mdbNNN images",
        dataset=DATASET,
        path=str(root),
    )


def read_mias(root: Path) -> list[Sample]:
    """All mini-MIAS films with their abnormality circles, sorted by reference number.

    Label: 1 if any abnormality of the film is malignant. Class name: ``malignant``, ``benign``
    or ``normal``. Films whose abnormality has no location get ``extra["mask_incomplete"]``.

    Raises:
        DatasetLayoutError: ``Info.txt`` or a film it lists is missing.
        DatasetFormatError: an ``mdbNNN`` row of ``Info.txt`` that does not parse.
    """
    base = find_root(root)
    rows = parse_info(base / INFO_FILE)
    samples = [_sample(base, ref, abnormalities) for ref, abnormalities in sorted(rows.items())]
    listed = {s.image_path.name for s in samples}
    unlisted = sorted(
        p.name for p in base.glob("mdb*") if p.suffix in IMAGE_SUFFIXES and p.name not in listed
    )
    if unlisted:
        logger.warning("%d mini-MIAS images not in %s are ignored", len(unlisted), INFO_FILE)
    return samples


def parse_info(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Rows of ``Info.txt`` grouped by reference; free text and blank lines are skipped.

    Each abnormality is ``{"class", "severity", "tissue", "x", "y", "radius"}`` with ``x``, ``y``,
    ``radius`` as given (1024 grid, origin bottom-left) or None where the row has none.
    """
    rows: dict[str, list[dict[str, Any]]] = {}
    text = path.read_text(encoding="latin-1")
    for number, line in enumerate(text.splitlines(), start=1):
        match = _ROW_RE.match(line)
        if match:
            rows.setdefault(match[1], []).append(_parse_row(match[2].split(), path, number))
    if not rows:
        raise DatasetFormatError(
            f"{path} holds no 'mdbNNN <tissue> <class> ...' rows", dataset=DATASET, path=str(path)
        )
    return rows


def _parse_row(tokens: list[str], path: Path, number: int) -> dict[str, Any]:
    def fail(rule: str) -> DatasetFormatError:
        return DatasetFormatError(
            f"{path}:{number}: {rule}", dataset=DATASET, path=str(path), line=number
        )

    if len(tokens) < 2 or tokens[0] not in TISSUES or tokens[1] not in CLASSES:
        raise fail(f"expected tissue in {sorted(TISSUES)} and class in {sorted(CLASSES)}")
    tissue, cls, rest = tokens[0], tokens[1], tokens[2:]
    severity = None
    if rest and rest[0] in SEVERITIES:
        severity, rest = rest[0], rest[1:]
    if cls != "NORM" and severity is None:
        raise fail(f"abnormality {cls} needs a severity B or M")
    numbers: list[int] = []
    for token in rest:  # leading numbers; free text such as '*NOTE 3*' ends them
        if not token.isdigit():
            break
        numbers.append(int(token))
    if len(numbers) not in (0, 3) or (cls == "NORM" and numbers):
        raise fail("expected either no coordinates or x, y and radius")
    x, y, radius = numbers if numbers else (None, None, None)
    return {"class": cls, "severity": severity, "tissue": tissue, "x": x, "y": y, "radius": radius}


def _sample(base: Path, ref: str, abnormalities: list[dict[str, Any]]) -> Sample:
    image_path = _image_path(base, ref)
    lesions = [a for a in abnormalities if a["class"] != "NORM"]
    circles = tuple(
        Circle(float(a["x"]), float(GRID - a["y"]), float(a["radius"]), (GRID, GRID))
        for a in lesions
        if a["x"] is not None
    )
    malignant = any(a["severity"] == "M" for a in lesions)
    class_name = "malignant" if malignant else ("benign" if lesions else "normal")
    number = int(ref[3:])
    return Sample(
        id=ref,
        dataset=DATASET,
        image_path=image_path,
        label=MALIGNANT if malignant else BENIGN,
        class_name=class_name,
        modality=Modality.MG,
        circles=circles,
        patient_id=f"mias_{(number + 1) // 2:03d}",
        laterality=Laterality.LEFT if number % 2 == 0 else Laterality.RIGHT,
        view=ViewPosition.MLO,
        extra={
            "tissue": abnormalities[0]["tissue"],
            "abnormalities": lesions,
            "mask_incomplete": len(circles) < len(lesions),
        },
    )


def _image_path(base: Path, ref: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        if (base / f"{ref}{suffix}").is_file():
            return base / f"{ref}{suffix}"
    raise DatasetLayoutError(
        f"{INFO_FILE} lists {ref} but {base / (ref + '.png')} (or .pgm) is missing",
        dataset=DATASET,
        path=str(base / f"{ref}.png"),
    )
