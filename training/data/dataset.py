"""Pixels and masks of one ``Sample``, torch-free (a torch Dataset wraps ``load_sample``).

Images come back as float32 ``(H, W, C)`` in [0, 1] with C = 1 (grey) or 3 (RGB); masks as
uint8 ``(H, W)`` holding 0 and 1: the OR of every mask file (BUSI lists one file per lesion,
CBIS-DDSM one ROI mask per abnormality), the filled circles of mini-MIAS, or the ellipse
inscribed in each box where a release gives boxes only (``extra["boxes"]``, CBIS-DDSM as COCO),
scaled to the image's size. Histopathology patches have no mask: an all-zero one is returned.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from imaging.decode import decode
from training.data.records import Circle, Sample

logger = logging.getLogger(__name__)


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """``(image, mask)``: float32 ``(H, W, C)`` in [0, 1] and uint8 ``(H, W)`` in {0, 1}."""
    image = read_image(sample.image_path)  # (H, W, C)
    mask = load_mask(sample, image.shape[:2])  # (H, W)
    return image, mask


def load_mask(sample: Sample, shape: tuple[int, int]) -> np.ndarray:
    """The sample's merged lesion mask on an image of ``shape = (height, width)``."""
    mask = np.zeros(shape, np.uint8)
    for path in sample.mask_paths:
        part = _read_mask_file(path)
        if part.shape != mask.shape:
            # CBIS-DDSM has a few ROI masks a few pixels off the image size; BUSI copies may be
            # rescaled: nearest neighbour keeps the mask binary.
            logger.debug("mask %s is %s, image %s: resized", path.name, part.shape, shape)
            part = cv2.resize(part, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        mask |= part
    for circle in sample.circles:
        draw_circle(mask, circle.scaled(shape))
    grid = sample.extra.get("box_grid") or shape
    for box in sample.extra.get("boxes", ()):
        draw_box_ellipse(mask, box, (int(grid[0]), int(grid[1])))
    return mask


def draw_box_ellipse(
    mask: np.ndarray, box: tuple[float, float, float, float], grid: tuple[int, int]
) -> None:
    """Fill the ellipse inscribed in ``box = (x, y, w, h)`` (pixels of a ``grid = (height,
    width)`` image) with 1, in place, on the mask's own grid; clipped to the mask.

    A pixel is inside when its centre is (box coordinates are continuous: pixel ``i`` spans
    ``[i, i + 1)``), so the target never leaves its box. An axis-aligned scaling maps the
    inscribed ellipse of a box onto that of the scaled box, so the target is exact on any grid
    (CBIS-DDSM's squashed 800 x 800 copy included).
    """
    sy, sx = mask.shape[0] / grid[0], mask.shape[1] / grid[1]
    x, y, w, h = (float(v) for v in box)
    x, y, w, h = x * sx, y * sy, max(w * sx, 1e-6), max(h * sy, 1e-6)
    top, left = max(0, int(np.floor(y))), max(0, int(np.floor(x)))
    bottom = min(mask.shape[0], int(np.ceil(y + h)))
    right = min(mask.shape[1], int(np.ceil(x + w)))
    if bottom <= top or right <= left:
        return
    rows = (np.arange(top, bottom) + 0.5 - (y + h / 2)) / (h / 2)  # (n,)
    cols = (np.arange(left, right) + 0.5 - (x + w / 2)) / (w / 2)  # (m,)
    inside = rows[:, None] ** 2 + cols[None, :] ** 2 <= 1.0  # (n, m)
    mask[top:bottom, left:right][inside] = 1


def draw_circle(mask: np.ndarray, circle: Circle) -> None:
    """Fill ``circle`` (already on the mask's grid) with 1, in place, clipped to the mask."""
    shift = 4  # sub-pixel precision: cv2 takes fixed-point coordinates
    centre = (round(circle.x * (1 << shift)), round(circle.y * (1 << shift)))
    radius = max(1, round(circle.radius * (1 << shift)))
    cv2.circle(mask, centre, radius, 1, thickness=-1, lineType=cv2.LINE_8, shift=shift)


def read_image(path: Path) -> np.ndarray:
    """An image file as float32 ``(H, W, C)`` in [0, 1], C = 1 or 3."""
    pixels = _read_image(Path(path))
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return np.ascontiguousarray(pixels, dtype=np.float32)


def _read_image(path: Path) -> np.ndarray:
    """Decode with ``imaging.decode`` (the decoder serving uses): float32 in [0, 1],
    ``(H, W)`` or ``(H, W, 3)`` RGB; DICOM through its VOI window, MONOCHROME1 inverted."""
    return decode(path).display(0)


def _read_mask_file(path: Path) -> np.ndarray:
    """A mask file as uint8 {0, 1}: above half the range (JPEG copies are not exactly binary)."""
    values = decode(path).frame(0)  # stored values, (H, W) or (H, W, 3)
    if values.ndim == 3:
        values = values.max(axis=2)
    top = int(values.max()) if values.size else 0
    if top <= 1:
        return (values > 0).astype(np.uint8)
    nominal = 255 if values.dtype == np.uint8 else top  # 16-bit DICOM masks hold 0 and max
    return (values > nominal / 2).astype(np.uint8)
