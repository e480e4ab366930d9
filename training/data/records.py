"""The record every data-set reader returns, and the errors of this package.

A ``Sample`` names files and facts, never pixels: readers only walk folders and parse tables, and
``training.data.dataset.load_sample`` decodes. Values in ``extra`` are JSON-ready (str, int,
float, bool, None, lists and dicts of those), so a sample can be written into a split file or a
run manifest as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from breastdx.errors import BreastdxError
from imaging.record import Laterality, ViewPosition
from models_registry.card import Stage  # the one Stage enum (torch-free)

BENIGN = 0
MALIGNANT = 1


class DatasetError(BreastdxError):
    """Base class: a data set on disk could not be turned into samples."""

    code = "dataset_error"
    title = "Data set could not be read"
    http_status = 422


class DatasetLayoutError(DatasetError):
    """A file or folder the release layout requires is missing (the message names it)."""

    code = "dataset_layout"
    title = "Data set layout not recognised"


class DatasetFormatError(DatasetError):
    """A file is where the layout expects it but its name or content breaks the release's rules."""

    code = "dataset_format"
    title = "Data set file not understood"


class SplitError(DatasetError):
    """Split parameters are invalid (fractions, group policy, empty input)."""

    code = "split_invalid"
    title = "Invalid split request"


class SplitIntegrityError(DatasetError):
    """A saved split no longer matches the data: a file changed, vanished or a group straddles."""

    code = "split_integrity"
    title = "Split does not match the data"


class Modality(StrEnum):
    """DICOM (0008,0060) Modality codes of the three imaging stages."""

    MG = "MG"  # mammography
    US = "US"  # ultrasound
    SM = "SM"  # slide microscopy (histopathology)


_STAGE_OF = {
    Modality.MG: Stage.MAMMOGRAPHY,
    Modality.US: Stage.ULTRASOUND,
    Modality.SM: Stage.HISTOPATHOLOGY,
}


@dataclass(frozen=True)
class Circle:
    """A circular region, centre and radius in pixels of a ``grid`` with its origin top-left.

    ``grid`` is ``(height, width)`` of the image the numbers refer to; ``scaled`` maps the circle
    onto an image of another size (mini-MIAS gives circles in the 1024 grid of the original films
    while copies are often stored at 512 px).
    """

    x: float
    y: float
    radius: float
    grid: tuple[int, int]

    def scaled(self, shape: tuple[int, int]) -> Circle:
        """The same circle on an image of ``shape = (height, width)``."""
        sy, sx = shape[0] / self.grid[0], shape[1] / self.grid[1]
        return Circle(self.x * sx, self.y * sy, self.radius * (sx + sy) / 2, (shape[0], shape[1]))


@dataclass(frozen=True)
class Sample:
    """One image of a data set with its label, masks and provenance.

    Attributes:
        id: unique within its data set, stable across runs (derived from the release's names).
        dataset: ``busi``, ``cbis_ddsm``, ``mini_mias`` or ``idc``.
        image_path: the image file.
        label: 1 malignant (IDC positive), 0 otherwise (benign, normal, IDC negative).
        class_name: the release's class (``benign``, ``malignant``, ``normal``, ``idc``, ...).
        modality: MG, US or SM; ``stage`` follows from it.
        mask_paths: lesion mask files, merged by logical OR (empty: no mask files).
        circles: lesion circles where the release gives circles instead of masks (mini-MIAS).
        patient_id: where the release identifies patients (CBIS-DDSM, mini-MIAS pairs, IDC).
        group_id: samples that must stay on one side of a split share it (patient, else image);
            ``splits`` adds near-duplicate grouping on top.
        laterality, view: where known (mammography).
        extra: JSON-ready release facts (BI-RADS, density, abnormalities, patch position...).
    """

    id: str
    dataset: str
    image_path: Path
    label: int
    class_name: str
    modality: Modality
    mask_paths: tuple[Path, ...] = ()
    circles: tuple[Circle, ...] = ()
    patient_id: str | None = None
    group_id: str = ""
    laterality: Laterality = Laterality.UNKNOWN
    view: ViewPosition = ViewPosition.UNKNOWN
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.id:
            raise DatasetFormatError("a sample id must not be empty", dataset=self.dataset)
        if self.label not in (BENIGN, MALIGNANT):
            raise DatasetFormatError(
                f"label must be 0 or 1, got {self.label!r}", dataset=self.dataset, sample=self.id
            )
        if not self.group_id:
            default = f"patient:{self.patient_id}" if self.patient_id else f"image:{self.id}"
            object.__setattr__(self, "group_id", default)

    @property
    def stage(self) -> Stage:
        return _STAGE_OF[self.modality]

    @property
    def segmentable(self) -> bool:
        """True where the mask is a full segmentation target (possibly empty: normal images).

        False for histopathology patches (classification only) and for images whose release
        lists an abnormality without a location (``extra["mask_incomplete"]``).
        """
        return self.modality is not Modality.SM and not self.extra.get("mask_incomplete", False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings)."""
        return {
            "id": self.id,
            "dataset": self.dataset,
            "image_path": str(self.image_path),
            "label": self.label,
            "class_name": self.class_name,
            "modality": self.modality.value,
            "mask_paths": [str(p) for p in self.mask_paths],
            "circles": [[c.x, c.y, c.radius, list(c.grid)] for c in self.circles],
            "patient_id": self.patient_id,
            "group_id": self.group_id,
            "laterality": self.laterality.value,
            "view": self.view.value,
            "extra": dict(self.extra),
        }
