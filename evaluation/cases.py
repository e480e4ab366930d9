"""A labelled case: one image with what is known about it (lesion truth, label, patient).

``Case`` is what every data-set format yields (``evaluation.formats``); it names files and facts,
never pixels. Truth comes in three kinds, any of which may be absent: lesion masks (merged by
logical OR), circles (mini-MIAS, drawn as filled discs) and boxes ``(x, y, width, height)`` in
the image's pixels (CBIS-DDSM's COCO file, a hospital CSV).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from training.data.records import Circle, Sample


@dataclass(frozen=True)
class Case:
    """One image to evaluate.

    Attributes:
        id: unique within its data set (the reader's sample id, or the CSV's image path).
        dataset: the data set's short name (``busi``, ``busbra``, ``mini_mias``, ``cbis_ddsm``,
            ``idc``, ``csv``).
        image_path: the image file.
        label: 1 malignant, 0 benign or normal, None unknown.
        patient: the patient where the data names one (bootstrap intervals resample patients).
        mask_paths: lesion mask files, merged by OR; empty with ``has_lesion`` False: no lesion.
        circles: lesion circles (mini-MIAS).
        boxes: lesion boxes ``(x, y, w, h)`` in pixels of ``box_grid`` (``(height, width)``;
            None: the image's own grid).
        has_lesion: True/False where the truth says; None where it says nothing (IDC patches).
        truth: ``mask`` (a full lesion mask: files or circles; none of them = no lesion),
            ``boxes`` (lesion boxes only) or ``none`` (no location: classification only, e.g. a
            mini-MIAS film whose calcifications have no centre).
    """

    id: str
    dataset: str
    image_path: Path
    label: int | None = None
    patient: str | None = None
    mask_paths: tuple[Path, ...] = ()
    circles: tuple[Circle, ...] = ()
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    box_grid: tuple[int, int] | None = None
    has_lesion: bool | None = None
    truth: Literal["mask", "boxes", "none"] = "none"
    extra: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def group(self) -> str:
        """The bootstrap's resampling unit: the patient where known, else the image."""
        return f"patient:{self.patient}" if self.patient else f"image:{self.id}"


def case_from_sample(sample: Sample) -> Case:
    """A training-data ``Sample`` as a case: boxes (``extra["boxes"]``, CBIS-DDSM COCO), or a
    lesion mask (mask files, circles; none of them = no lesion) for segmentable samples."""
    base = Case(
        id=sample.id,
        dataset=sample.dataset,
        image_path=sample.image_path,
        label=sample.label,
        patient=sample.patient_id,
        extra={"class_name": sample.class_name},
    )
    if "boxes" in sample.extra:
        boxes = tuple(
            (float(x), float(y), float(w), float(h)) for x, y, w, h in sample.extra["boxes"]
        )
        grid = sample.extra.get("box_grid")
        size = (int(grid[0]), int(grid[1])) if grid else None
        return replace(base, boxes=boxes, box_grid=size, has_lesion=bool(boxes), truth="boxes")
    incomplete = bool(sample.extra.get("mask_incomplete"))
    has_lesion = None
    if sample.segmentable or incomplete:
        has_lesion = incomplete or bool(sample.circles) or sample.class_name != "normal"
    truth: Literal["mask", "none"] = "mask" if sample.segmentable else "none"
    return replace(
        base,
        mask_paths=sample.mask_paths,
        circles=sample.circles,
        has_lesion=has_lesion,
        truth=truth,
    )
