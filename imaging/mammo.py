"""Mammogram-specific preprocessing: breast segmentation and canonical orientation.

``breast_region`` separates the breast from the background, film borders and burned-in labels;
``canonical_flip_needed`` decides whether a left-right flip puts the chest wall on the left;
``prepare_mammogram`` crops to the breast and flips, recording both in a ``Geometry``.

The segmentation is classical (no model): a smoothed image at a working scale of at most
``WORK_SIZE`` pixels, a threshold at half of Otsu's (N. Otsu, IEEE Trans. SMC 9(1), 1979),
removal of bright straight bands along the image edges, a morphological opening that detaches
labels and film edges, the largest 8-connected component, and hole filling. The largest
component, not "the one touching the image edge", is taken as the breast because on digitised
films (mini-MIAS) the breast meets the film edge, which lies inside a black margin.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import cv2
import numpy as np

from imaging.errors import ImagingError
from imaging.geometry import Crop, Flip, Geometry, Interpolation, Op, resize_array
from imaging.record import Laterality

WORK_SIZE = 512  # longer side of the working image, pixels
OTSU_FRACTION = 0.5  # threshold = this fraction of Otsu's threshold: keeps the faint skin line
EDGE_MARGIN = 0.10  # film borders are searched within this fraction of the size from each edge
EDGE_BAND_MIN = 0.05  # a row is a film border if it reaches this fraction of the width beyond
# the breast, as seen at the margin's depth
SIDE_BAND = 0.05  # width of the chest-wall / nipple bands, as a fraction of the bbox width
SIDE_RATIO = 1.5  # one band must be this many times fuller than the other to decide the side
BT601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 luma weights


class NoBreastFoundError(ImagingError):
    """The image holds no region bright and large enough to be a breast."""

    code = "no_breast_found"
    title = "No breast tissue found"


class ChestWallSide(StrEnum):
    LEFT = "left"
    RIGHT = "right"
    UNKNOWN = "unknown"


@dataclass(frozen=True, eq=False)
class BreastRegion:
    """The breast in an image.

    Attributes:
        mask: ``(H, W)`` bool, True on breast tissue (labels and film borders excluded).
        bbox: ``(x, y, width, height)`` of the mask, original pixels.
        chest_wall: the side judged from the mask alone (``UNKNOWN`` when ambiguous).
    """

    mask: np.ndarray
    bbox: tuple[int, int, int, int]
    chest_wall: ChestWallSide

    def crop(self) -> Crop:
        x, y, w, h = self.bbox
        return Crop(top=y, left=x, height=h, width=w)


def to_grey(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, 3)`` float -> ``(H, W)`` float32 (RGB by ITU-R BT.601 luma).

    OpenCV's conversion, not a product with ``BT601`` (``tensordot`` or ``@``): numpy hands a
    product of a large image to OpenBLAS's threads, which spin on after it and took the cores
    from the ONNX Runtime threads of the model run that follows (for an RGB ultrasound frame,
    493 x 512, the conversion cost 4.9 ms instead of 0.2 and the model run 155 ms, not 95).
    The values are the product's within one float32 step."""
    if image.ndim == 2:
        return image.astype(np.float32, copy=False)
    if image.ndim == 3 and image.shape[2] == 3:
        rgb = np.ascontiguousarray(image, dtype=np.float32)
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    raise ValueError(f"an image must be (H, W) or (H, W, 3), got shape {image.shape}")


def _work_image(grey: np.ndarray) -> np.ndarray:
    """Downscale (area) so the longer side is at most ``WORK_SIZE``, smooth; uint8 ``(h, w)``."""
    h, w = grey.shape
    scale = min(1.0, WORK_SIZE / max(h, w))
    small_hw = (max(1, round(h * scale)), max(1, round(w * scale)))
    small = resize_array(grey, small_hw, Interpolation.AREA)
    sigma = max(small_hw) / 256.0  # 2 px at 512
    small = cv2.GaussianBlur(small, (0, 0), sigma)
    return np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8)


def _trim_edge_bands(fg: np.ndarray) -> None:
    """Clear bright straight bands (film borders) along the four edges, in place.

    For each edge, a line within ``EDGE_MARGIN`` of it keeps only the foreground that the line at
    the margin's depth also has, when it reaches more than ``EDGE_BAND_MIN`` of the width beyond
    it: a breast changes its width slowly near an edge, a film border spans it at once.
    """
    for view in (fg, fg[::-1], fg.T, fg.T[::-1]):  # views: top, bottom, left, right edge
        depth = max(2, round(EDGE_MARGIN * view.shape[0]))
        if depth >= view.shape[0]:
            continue
        reference = view[depth].copy()
        for row in range(depth):
            extra = view[row] & ~reference
            if extra.sum() > EDGE_BAND_MIN * view.shape[1]:
                view[row] &= reference


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Set background pixels that the image border cannot reach (4-connected background)."""
    padded = np.pad(mask.astype(np.uint8), 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1, flags=4)
    holes = flood[1:-1, 1:-1] == 0
    return mask | holes


def _largest_component(fg: np.ndarray) -> np.ndarray:
    _, labels, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8), connectivity=8)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


def _segment_small(work: np.ndarray) -> np.ndarray:
    """Working-scale uint8 image -> working-scale bool breast mask."""
    otsu, _ = cv2.threshold(work, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    fg = work > max(1.0, OTSU_FRACTION * otsu)
    if not fg.any():
        raise NoBreastFoundError("no pixel above the breast threshold: the image is blank")
    _trim_edge_bands(fg)
    size = max(3, round(max(work.shape) / 56) | 1)  # odd; 9 px at 512
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    opened = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN, kernel).astype(bool)
    if not opened.any():
        raise NoBreastFoundError("no region large enough to be a breast")
    return _fill_holes(_largest_component(opened))


def chest_wall_side(mask: np.ndarray) -> ChestWallSide:
    """Which side of a breast mask is the chest wall, from its shape.

    The chest wall is the long straight side where the breast meets the image or film edge; the
    nipple side tapers. Compares how full the leftmost and rightmost ``SIDE_BAND`` of the bbox
    are; ``UNKNOWN`` unless one is ``SIDE_RATIO`` times fuller than the other.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return ChestWallSide.UNKNOWN
    box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    band = max(1, round(SIDE_BAND * box.shape[1]))
    left = float(box[:, :band].mean())
    right = float(box[:, -band:].mean())
    if left > SIDE_RATIO * right:
        return ChestWallSide.LEFT
    if right > SIDE_RATIO * left:
        return ChestWallSide.RIGHT
    return ChestWallSide.UNKNOWN


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return (
        int(cols[0]),
        int(rows[0]),
        int(cols[-1] - cols[0] + 1),
        int(rows[-1] - rows[0] + 1),
    )


def breast_region(image: np.ndarray) -> BreastRegion:
    """Segment the breast in a mammogram, float in [0, 1], ``(H, W)`` or ``(H, W, 3)``.

    Raises:
        NoBreastFoundError: the image is blank or holds no breast-sized region.
    """
    grey = to_grey(image)  # (H, W)
    small = _segment_small(_work_image(grey))  # (h, w) bool
    chest_wall = chest_wall_side(small)
    if small.shape != grey.shape:  # smooth upscaling of the mask: linear, then >= 0.5
        upscaled = resize_array(small.astype(np.float32), grey.shape, Interpolation.LINEAR)
        mask = upscaled >= 0.5
    else:
        mask = small
    if not mask.any():
        raise NoBreastFoundError("no region large enough to be a breast")
    return BreastRegion(mask=mask, bbox=_bbox(mask), chest_wall=chest_wall)


def canonical_flip_needed(
    image_or_mask: np.ndarray, laterality: Laterality = Laterality.UNKNOWN
) -> bool:
    """True if a left-right flip is needed to put the chest wall on the left (nipple right).

    The rule: decide from the image content (``chest_wall_side`` of the breast mask; a bool
    array is taken as that mask, anything else is segmented first). Only when the content is
    ambiguous, fall back to laterality as the standard display has it (IHE Mammography Image
    profile, Patient Orientation (0020,0020)): a left breast has its chest wall on the left, a
    right breast on the right. Unknown or bilateral: no flip.
    """
    if image_or_mask.dtype == np.bool_:
        side = chest_wall_side(image_or_mask)
    else:
        side = breast_region(image_or_mask).chest_wall
    return _flip_for(side, laterality)


def _flip_for(side: ChestWallSide, laterality: Laterality) -> bool:
    if side is ChestWallSide.UNKNOWN:
        return laterality is Laterality.RIGHT
    return side is ChestWallSide.RIGHT


def prepare_mammogram(
    image: np.ndarray,
    laterality: Laterality = Laterality.UNKNOWN,
    *,
    mask_background: bool = True,
) -> tuple[np.ndarray, Geometry]:
    """Crop a mammogram to the breast and put the chest wall on the left.

    Args:
        image: float in [0, 1], ``(H, W)`` or ``(H, W, 3)``.
        laterality: used only when the image content cannot tell the orientation.
        mask_background: set pixels outside the breast mask (labels inside the bbox) to 0.

    Returns:
        The cropped, flipped image (dtype kept) and the ``Geometry`` recording crop and flip.
    """
    region = breast_region(image)
    ops: list[Op] = [region.crop()]
    flip = _flip_for(region.chest_wall, laterality)
    if flip:
        ops.append(Flip(horizontal=True))
    geometry = Geometry(image.shape[:2], tuple(ops))
    x, y, w, h = region.bbox
    cropped = image[y : y + h, x : x + w]
    if mask_background:
        inside = region.mask[y : y + h, x : x + w]
        cropped = np.where(inside[..., None] if cropped.ndim == 3 else inside, cropped, 0)
    out = cropped[:, ::-1] if flip else cropped
    return np.ascontiguousarray(out, dtype=image.dtype), geometry
