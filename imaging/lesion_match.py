"""Whether a marked lesion hits a true one: the FROC hit rule, shared by evaluation and training.

``breastdx evaluate`` reads the FROC with it (``evaluation.lesions``) and ``breastdx export``
chooses a detection operating point on validation with it (``training.operating_point``), so
the two count hits the same way. Boxes are ``(x, y, width, height)`` in pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

Box = tuple[float, float, float, float]  # x, y, width, height in pixels
MIN_IOU = 0.2
HIT_RULE = (
    "a marked lesion hits a true one when the centre of its bounding box lies inside the true "
    f"box or the two boxes' IoU is at least {MIN_IOU}; marks are taken in descending score per "
    "image and each true lesion is hit at most once (a further mark on it counts as a false "
    "positive)"
)


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
