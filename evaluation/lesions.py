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

from imaging.lesion_match import (  # noqa: F401  (re-exported: the FROC's hit rule)
    HIT_RULE,
    MIN_IOU,
    Box,
    box_iou,
    hits,
    mask_boxes,
    match_marks,
)

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
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
