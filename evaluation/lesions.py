"""Lesion-level measures: Hausdorff-95 between masks and FROC of ranked lesion marks.

Hausdorff-95 (HD95): the 95th percentile of the distances from every boundary pixel of one mask
to the nearest boundary pixel of the other, both directions pooled (as ``medpy.metric.hd95``);
a boundary pixel is a foreground pixel with a background 4-neighbour. Undefined (nan) where
either mask is empty. Distances in pixels, or in mm with ``spacing = (row, column)`` in mm.

FROC (Bunch et al. 1978; as in the LUNA16 and CAMELYON challenges): lesion marks of every image
are ranked by score; a mark hits a true lesion when the mark's box centre lies inside the true
box or the two boxes' IoU is at least 0.2 (``HIT_RULE``). Per image, marks are taken in
descending score and each claims the first unclaimed true lesion it hits; a mark that hits no
unclaimed lesion (a miss, or a second mark on a lesion already hit) is a false positive. The
curve is the sensitivity over all true lesions against false positives per image as the score
threshold falls; ``froc_points`` reads it at fixed rates (the best sensitivity at or below each).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

Box = tuple[float, float, float, float]  # x, y, width, height in pixels
FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
MIN_IOU = 0.2
HIT_RULE = (
    "a marked lesion hits a true one when the centre of its bounding box lies inside the true "
    f"box or the two boxes' IoU is at least {MIN_IOU}; marks are taken in descending score per "
    "image and each true lesion is hit at most once (a further mark on it counts as a false "
    "positive)"
)
_CHUNK = 2048


def boundary_points(mask: np.ndarray) -> np.ndarray:
    """``(K, 2)`` row, column of the boundary pixels of a boolean ``(H, W)`` mask."""
    fg = mask.astype(np.uint8)
    eroded = cv2.erode(fg, cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)), borderValue=0)
    return np.argwhere((fg > 0) & (eroded == 0))


def _nearest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from each point of ``a (K, 2)`` to the nearest of ``b (L, 2)``."""
    out = np.empty(len(a))
    for start in range(0, len(a), _CHUNK):
        part = a[start : start + _CHUNK, None, :] - b[None, :, :]  # (k, L, 2)
        out[start : start + _CHUNK] = np.sqrt((part**2).sum(axis=2)).min(axis=1)
    return out


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """Symmetric Hausdorff-95 between two boolean masks; nan where either is empty."""
    p, t = boundary_points(pred), boundary_points(truth)
    if not len(p) or not len(t):
        return float("nan")
    scale = np.asarray(spacing, dtype=np.float64)
    p, t = p * scale, t * scale
    return float(np.percentile(np.concatenate([_nearest(p, t), _nearest(t, p)]), 95))


def mask_boxes(mask: np.ndarray) -> list[Box]:
    """Bounding boxes of the 8-connected components of a boolean mask."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return [tuple(float(v) for v in stats[i, :4]) for i in range(1, count)]  # type: ignore[misc]


def box_iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def hits(mark: Box, truth: Box) -> bool:
    """The FROC hit rule (``HIT_RULE``)."""
    cx, cy = mark[0] + mark[2] / 2, mark[1] + mark[3] / 2
    inside = truth[0] <= cx <= truth[0] + truth[2] and truth[1] <= cy <= truth[1] + truth[3]
    return inside or box_iou(mark, truth) >= MIN_IOU


def match_marks(marks: Sequence[tuple[Box, float]], truths: Sequence[Box]) -> list[bool]:
    """Per mark (in the given order), True where it claims a true lesion (``HIT_RULE``)."""
    order = sorted(range(len(marks)), key=lambda i: -marks[i][1])
    claimed = [False] * len(truths)
    hit = [False] * len(marks)
    for i in order:
        for j, truth in enumerate(truths):
            if not claimed[j] and hits(marks[i][0], truth):
                claimed[j] = hit[i] = True
                break
    return hit


@dataclass(frozen=True)
class FrocCurve:
    """``fp_per_image[k]``, ``sensitivity[k]`` at the k-th threshold (descending scores)."""

    fp_per_image: np.ndarray
    sensitivity: np.ndarray
    n_images: int
    n_lesions: int


def froc_curve(scores: np.ndarray, hit: np.ndarray, n_images: int, n_lesions: int) -> FrocCurve:
    """The FROC curve of all marks (``scores``, ``hit`` flags from ``match_marks``)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    flags = np.asarray(hit, dtype=bool)[order]
    tp, fp = np.cumsum(flags), np.cumsum(~flags)
    sens = tp / n_lesions if n_lesions else np.full(len(tp), np.nan)
    return FrocCurve(
        np.concatenate([[0.0], fp / max(n_images, 1)]),
        np.concatenate([[0.0], sens]),
        n_images,
        n_lesions,
    )


def froc_points(curve: FrocCurve, rates: Sequence[float] = FP_RATES) -> list[float]:
    """Sensitivity at each false-positive rate: the best reached at or below it."""
    if curve.n_lesions == 0:
        return [float("nan")] * len(rates)
    return [float(curve.sensitivity[curve.fp_per_image <= r].max()) for r in rates]
