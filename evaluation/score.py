"""Score one analysed case against its truth, at the image's original geometry.

The prediction is the pipeline's own output (``service.inference.Analysis``): the lesion mask
mapped back to the original rows and columns, the lesions found in it and the malignancy score.
The truth is read here: mask files (merged by OR; a mask whose size differs from its image is
refused, never resized), mini-MIAS circles drawn at the image's size, or boxes. The record is
JSON-ready, so it goes to the resume cache as it is.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from breastdx.errors import BreastdxError
from evaluation.cases import Case
from evaluation.lesions import Box, hd95, mask_boxes, match_marks
from evaluation.metrics import dice_score, iou_score
from imaging.errors import ImagingError
from imaging.postprocess import Lesion
from service.inference import Analysis
from training.data.dataset import _read_mask_file, draw_circle


class CaseTruthError(BreastdxError):
    """A case's truth cannot be used: a mask file is missing, unreadable or of another size."""

    code = "case_truth_invalid"
    title = "Case truth unusable"
    http_status = 422


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def truth_mask(case: Case, shape: tuple[int, int]) -> np.ndarray:
    """The case's lesion mask, boolean ``(H, W)`` at the image's ``shape``."""
    mask = np.zeros(shape, np.uint8)
    for path in case.mask_paths:
        if not path.is_file():
            raise CaseTruthError(f"mask file {path} is missing", path=str(path))
        try:
            part = _read_mask_file(path)  # (h, w) uint8 in {0, 1}
        except ImagingError as exc:
            raise CaseTruthError(f"mask file {path} is unreadable: {exc.message}") from exc
        if part.shape != shape:
            raise CaseTruthError(
                f"mask file {path} is {part.shape[1]}x{part.shape[0]} px but its image "
                f"{case.image_path.name} is {shape[1]}x{shape[0]} px; a mask must match its image",
                path=str(path),
            )
        mask |= part
    for circle in case.circles:
        draw_circle(mask, circle.scaled(shape))
    return mask > 0


def truth_boxes(case: Case, mask: np.ndarray | None, shape: tuple[int, int]) -> list[Box]:
    """True lesion boxes: given, a circle's bounding box, or the mask's components."""
    if case.boxes:
        grid = case.box_grid or shape
        sy, sx = shape[0] / grid[0], shape[1] / grid[1]
        return [(x * sx, y * sy, w * sx, h * sy) for x, y, w, h in case.boxes]
    if case.circles:
        scaled = [c.scaled(shape) for c in case.circles]
        return [(c.x - c.radius, c.y - c.radius, 2 * c.radius, 2 * c.radius) for c in scaled]
    return mask_boxes(mask) if mask is not None else []


def mark_score(lesion: Lesion) -> float:
    """A lesion's rank in the FROC: its own detection ``score`` where the pipeline gives one,
    else its mean pixel probability."""
    own = getattr(lesion, "score", None)
    return round(float(own if own is not None else lesion.mean_probability), 6)


def _finite(value: float) -> float | None:
    return None if not np.isfinite(value) else round(float(value), 6)


def score_case(case: Case, analysis: Analysis) -> dict[str, Any]:
    """The case's record: truth facts, prediction and per-image figures."""
    result = analysis.result
    shape = (result.input.rows, result.input.columns)
    spacing = result.input.pixel_spacing_mm
    pred = analysis.mask > 0  # (H, W) at the original geometry
    record: dict[str, Any] = {
        "id": case.id,
        "dataset": case.dataset,
        "group": case.group,
        "label": case.label,
        "truth": case.truth,
        "image_hw": list(shape),
        "spacing_mm": list(spacing) if spacing else None,
        "probability": result.malignancy.probability if result.malignancy else None,
        "image_sha256": file_sha256(case.image_path),
        "truth_sha256": [file_sha256(p) for p in case.mask_paths],
        "marks": [[*lesion.bbox, mark_score(lesion)] for lesion in result.lesions],
        "mark_score": "score"
        if all(getattr(lesion, "score", None) is not None for lesion in result.lesions)
        else "mean_probability",
        "contours": [lesion.contour for lesion in result.lesions],
        # regions below the card's presence threshold, ranked after the lesions in the FROC
        "candidates": [[*c.bbox, round(float(c.score), 6)] for c in analysis.candidates],
    }
    mask = truth_mask(case, shape) if case.truth == "mask" else None
    has_lesion = bool(mask.any()) if mask is not None else case.has_lesion
    record["has_lesion"] = has_lesion
    if mask is not None and has_lesion:
        record["dice"] = round(dice_score(pred, mask), 6)
        record["iou"] = round(iou_score(pred, mask), 6)
        record["hd95_px"] = _finite(hd95(pred, mask))
        record["hd95_mm"] = _finite(hd95(pred, mask, spacing)) if spacing else None
    if has_lesion is False:
        record["false_lesion"] = bool(result.lesions)
    if case.truth in ("mask", "boxes"):
        boxes = truth_boxes(case, mask, shape)
        record["truth_boxes"] = [[round(v, 2) for v in box] for box in boxes]
        marks = [((m[0], m[1], m[2], m[3]), m[4]) for m in record["marks"]]
        below = [((m[0], m[1], m[2], m[3]), m[4]) for m in record["candidates"]]
        # every candidate scores below every lesion, so the lesions claim truths first and
        # their hits are those of the lesions alone: the operating point on the whole curve
        matched = match_marks(marks + below, boxes)
        record["hits"], record["candidate_hits"] = matched[: len(marks)], matched[len(marks) :]
    return record
