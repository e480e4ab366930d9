"""Segmentation output -> lesions in original pixels, and the overlay picture.

``postprocess_mask`` maps the model's probability map back through the ``Geometry`` with LINEAR
interpolation and thresholds it there (thresholding after resizing gives smooth edges at the
original resolution instead of blocky model-size pixels), splits it into 8-connected lesions,
drops the small ones and measures the rest. ``Lesion`` and ``MaskResult`` are the JSON the API
returns; the masks themselves stay outside the JSON, on ``MaskResult.mask`` / ``.label_map``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from imaging.errors import InvalidGeometryError
from imaging.geometry import Geometry, Interpolation
from imaging.lesion_score import LesionScorer, region_features

CONTOUR_EPSILON_PX = 1.0  # Douglas-Peucker tolerance for simplified contours, original pixels


class Lesion(BaseModel):
    """One connected component of the thresholded mask, in original pixel coordinates."""

    model_config = ConfigDict(frozen=True)

    id: int = Field(ge=1, description="1 = largest; equals the value in MaskResult.label_map")
    bbox: tuple[int, int, int, int] = Field(description="(x, y, width, height), pixels")
    contour: list[tuple[int, int]] = Field(description="outer boundary, [x, y] points, simplified")
    area_px: int
    area_mm2: float | None = None  # row spacing * column spacing * area_px; None without spacing
    centroid: tuple[float, float] = Field(description="(x, y), pixels")
    mean_probability: float
    score: float | None = Field(
        default=None,
        description="detection score in [0, 1]: the lesion's peak probability, or where the "
        "model card carries a fitted lesion score (calibration.lesion_score), the probability "
        "that the region is a true lesion",
    )
    malignancy: float | None = Field(
        default=None,
        description="the lesion's own malignancy probability (mean of the model's per-pixel "
        "malignancy map over the lesion); None where the model has no such map",
    )


@dataclass(frozen=True)
class Candidate:
    """A region the presence decision dropped: above the pixel threshold and the minimum area,
    but with a detection score (``score``: the peak probability or the card's fitted lesion
    score, ``imaging.lesion_score``) below the presence threshold, or on an image the
    image-level presence decision found free of lesions. Not a finding; kept
    so that an evaluation can rank every region the model proposes (the FROC) and see where
    the operating point sits on that curve."""

    bbox: tuple[int, int, int, int]  # (x, y, width, height), original pixels
    score: float  # detection score, as Lesion.score


@dataclass(frozen=True)
class Region:
    """A region above the pixel threshold and the minimum area, kept as a lesion or not, with
    what a lesion score is fitted on (``imaging.lesion_score``: ``breastdx lesion-score``)."""

    bbox: tuple[int, int, int, int]  # (x, y, width, height), original pixels
    peak: float  # peak probability
    mean_probability: float
    area_px: int
    score: float  # detection score, as Lesion.score
    kept: bool  # marked as a lesion


class MaskResult(BaseModel):
    """All lesions of one image; ``mask``, ``label_map`` and ``candidates`` are kept out of the
    JSON."""

    model_config = ConfigDict(frozen=True)

    image_hw: tuple[int, int] = Field(description="(height, width) of the original image")
    threshold: float
    presence_threshold: float = 0.0
    min_area_px: int
    pixel_spacing_mm: tuple[float, float] | None = None
    lesions: list[Lesion]
    _label_map: np.ndarray = PrivateAttr()
    _candidates: tuple[Candidate, ...] = PrivateAttr(default=())
    _regions: tuple[Region, ...] = PrivateAttr(default=())

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        """Regions the presence decision dropped, highest score first (not findings)."""
        return self._candidates

    @property
    def regions(self) -> tuple[Region, ...]:
        """Every region above the pixel threshold and the minimum area, lesion or not."""
        return self._regions

    @property
    def label_map(self) -> np.ndarray:
        """``(H, W)`` int32: 0 background, else the id of the lesion."""
        return self._label_map

    @property
    def mask(self) -> np.ndarray:
        """``(H, W)`` bool: the kept lesions."""
        return self._label_map > 0

    @property
    def total_area_px(self) -> int:
        return sum(lesion.area_px for lesion in self.lesions)


def _check_inputs(prob: np.ndarray, geometry: Geometry, threshold: float) -> np.ndarray:
    if not isinstance(prob, np.ndarray) or prob.ndim != 2:
        raise InvalidGeometryError("a probability map must be an (h, w) array")
    if prob.shape != geometry.output_hw:
        raise InvalidGeometryError(
            f"a probability map of size {prob.shape[0]}x{prob.shape[1]} does not fit the model "
            f"input size {geometry.output_hw[0]}x{geometry.output_hw[1]} of its geometry"
        )
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    prob = prob.astype(np.float32, copy=False)
    if prob.size and not (float(prob.min()) >= 0.0 and float(prob.max()) <= 1.0):
        raise ValueError("probabilities must lie in [0, 1] (apply the sigmoid or softmax first)")
    return prob


def _min_area(
    min_area_px: int, min_area_mm2: float | None, spacing: tuple[float, float] | None
) -> int:
    """Smallest kept area in pixels: the larger of the pixel and the mm² limits."""
    if min_area_px < 0:
        raise ValueError(f"min_area_px must be >= 0, got {min_area_px}")
    if min_area_mm2 is None or spacing is None:
        return min_area_px
    return max(min_area_px, int(np.ceil(min_area_mm2 / (spacing[0] * spacing[1]))))


def _contour(component: np.ndarray, offset: tuple[int, int]) -> list[tuple[int, int]]:
    """Outer boundary of a bool ``(h, w)`` component, simplified, shifted by ``offset``."""
    contours, _ = cv2.findContours(
        component.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=offset
    )
    outer = max(contours, key=cv2.contourArea)  # one for an 8-connected component
    simple = cv2.approxPolyDP(outer, CONTOUR_EPSILON_PX, closed=True)  # (N, 1, 2)
    return [(int(x), int(y)) for x, y in simple.reshape(-1, 2)]


def _lesion(
    lesion_id: int,
    labels: np.ndarray,
    prob: np.ndarray,
    index: int,
    stats: np.ndarray,
    centroid: np.ndarray,
    spacing: tuple[float, float] | None,
    malignancy: np.ndarray | None = None,
    score: float | None = None,
) -> Lesion:
    x, y, w, h, area = (int(v) for v in stats)
    inside = labels[y : y + h, x : x + w] == index  # (h, w) bool
    own = None if malignancy is None else float(malignancy[y : y + h, x : x + w][inside].mean())
    return Lesion(
        id=lesion_id,
        bbox=(x, y, w, h),
        contour=_contour(inside, (x, y)),
        area_px=area,
        area_mm2=None if spacing is None else round(area * spacing[0] * spacing[1], 4),
        centroid=(round(float(centroid[0]), 2), round(float(centroid[1]), 2)),
        mean_probability=round(float(prob[y : y + h, x : x + w][inside].mean()), 4),
        score=round(float(prob[y : y + h, x : x + w][inside].max() if score is None else score), 4),
        malignancy=None if own is None else round(own, 4),
    )


def postprocess_mask(
    prob: np.ndarray,
    geometry: Geometry,
    *,
    threshold: float = 0.5,
    min_area_px: int = 16,
    min_area_mm2: float | None = None,
    pixel_spacing_mm: tuple[float, float] | None = None,
    presence_threshold: float = 0.0,
    malignancy_map: np.ndarray | None = None,
    present: bool = True,
    scorer: LesionScorer | None = None,
) -> MaskResult:
    """Model-size probability map -> lesions in the original image.

    Args:
        prob: ``(h, w)`` probabilities at the model input size (``geometry.output_hw``).
        geometry: the geometry the input was prepared with.
        threshold: a pixel is lesion where the resized probability is >= this.
        min_area_px: smaller components (original pixels) are dropped.
        min_area_mm2: also drop components below this area; applies only with a spacing.
        pixel_spacing_mm: ``(row, column)`` spacing; enables ``area_mm2``.
        presence_threshold: a lesion is kept only where its detection ``score`` reaches this:
            the lesion-presence decision (0: every component above ``threshold``).
        malignancy_map: ``(h, w)`` per-pixel malignancy probabilities at the model input size;
            each lesion's ``malignancy`` is their mean over the lesion (original pixels).
        present: the image-level presence decision (a model's presence output against its
            threshold); false: no component is a lesion, each is a candidate.
        scorer: a fitted lesion score (``imaging.lesion_score``); None: a region's score is its
            peak probability.
    """
    prob = _check_inputs(prob, geometry, threshold)
    full = geometry.to_original(prob, interpolation=Interpolation.LINEAR)  # (H, W) float32
    binary = (full >= threshold).astype(np.uint8)
    count, labels, stats, centroids, window = _components(binary)
    smallest = _min_area(min_area_px, min_area_mm2, pixel_spacing_mm)
    large = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= max(1, smallest)]
    peaks, means, scores = _scores(full, labels, stats, large, scorer)  # each (count,)
    kept = [i for i in large if present and scores[i] >= presence_threshold]
    below = sorted(set(large) - set(kept), key=lambda i: (-scores[i], i))
    malignancy = None
    if malignancy_map is not None and kept:
        malignancy = geometry.to_original(
            _check_inputs(malignancy_map, geometry, threshold),
            interpolation=Interpolation.LINEAR,
        )  # (H, W) float32
    kept.sort(key=lambda i: (-int(stats[i, cv2.CC_STAT_AREA]), i))
    lesions: list[Lesion] = []
    lookup = np.zeros(count, dtype=np.int32)  # component index -> lesion id (0: dropped)
    for rank, index in enumerate(kept, start=1):
        stat, centre = stats[index], centroids[index]
        lesions.append(
            _lesion(
                rank,
                labels,
                full,
                index,
                stat,
                centre,
                pixel_spacing_mm,
                malignancy,
                None if scorer is None else float(scores[index]),
            )
        )
        lookup[index] = rank
    result = MaskResult(
        image_hw=geometry.original_hw,
        threshold=threshold,
        presence_threshold=presence_threshold,
        min_area_px=smallest,
        pixel_spacing_mm=pixel_spacing_mm,
        lesions=lesions,
    )
    label_map = np.zeros(binary.shape, np.int32)  # (H, W)
    label_map[window] = np.take(lookup, labels[window])
    result._label_map = label_map
    result._candidates = tuple(
        Candidate(
            bbox=(int(stats[i, 0]), int(stats[i, 1]), int(stats[i, 2]), int(stats[i, 3])),
            score=round(float(scores[i]), 4),
        )
        for i in below
    )
    kept_set = set(kept)
    result._regions = tuple(
        Region(
            bbox=(int(stats[i, 0]), int(stats[i, 1]), int(stats[i, 2]), int(stats[i, 3])),
            peak=float(peaks[i]),
            mean_probability=float(means[i]),
            area_px=int(stats[i, cv2.CC_STAT_AREA]),
            score=float(scores[i]),
            kept=i in kept_set,
        )
        for i in large
    )
    return result


def _components(
    binary: np.ndarray,
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, tuple[slice, slice]]:
    """8-connected components of a uint8 ``(H, W)`` mask, labelled inside the box around its
    foreground only (what ``cv2.connectedComponentsWithStats`` gives for the whole image, at a
    fraction of its time when lesions cover little of it): count, ``(H, W)`` int32 labels,
    stats and centroids in image coordinates (row 0, the background, is not meaningful), and
    the box as slices."""
    x, y, w, h = cv2.boundingRect(binary)  # of the nonzero pixels; all 0 when there are none
    window = (slice(y, y + h), slice(x, x + w))
    labels = np.zeros(binary.shape, np.int32)
    if w == 0 or h == 0:
        return 1, labels, np.zeros((1, 5), np.int32), np.zeros((1, 2)), window
    count, inside, stats, centroids = cv2.connectedComponentsWithStats(
        np.ascontiguousarray(binary[window]), connectivity=8, ltype=cv2.CV_32S
    )
    labels[window] = inside
    stats[:, cv2.CC_STAT_LEFT] += x
    stats[:, cv2.CC_STAT_TOP] += y
    return count, labels, stats, centroids + np.array([x, y], np.float64), window


def _scores(
    full: np.ndarray,
    labels: np.ndarray,
    stats: np.ndarray,
    indices: list[int],
    scorer: LesionScorer | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(count,)`` peak and mean probability and detection score of the components
    ``indices`` (0 elsewhere); the score is the peak, or ``scorer`` over the region's
    features (``imaging.lesion_score``)."""
    peaks = np.zeros(len(stats), np.float64)
    means = np.zeros(len(stats), np.float64)
    for i in indices:
        x, y, w, h = (int(v) for v in stats[i, :4])
        values = full[y : y + h, x : x + w][labels[y : y + h, x : x + w] == i]
        peaks[i] = values.max()
        means[i] = values.mean(dtype=np.float64)
    if scorer is None or not indices:
        return peaks, means, peaks
    area = stats[indices, cv2.CC_STAT_AREA]
    features = region_features(peaks[indices], means[indices], area, full.shape[0] * full.shape[1])
    scores = np.zeros(len(stats), np.float64)
    scores[indices] = np.round(scorer(features), 4)  # as reported, and as gated
    return peaks, means, scores


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A display image (float in [0, 1], or uint8) as uint8 of the same shape."""
    if image.dtype == np.uint8:
        return image
    return np.clip(np.rint(image.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and image.shape[2] == 3:
        return to_uint8(image).copy()
    if image.ndim != 2:
        raise ValueError(f"an overlay needs an (H, W) or (H, W, 3) image, got {image.shape}")
    return cv2.cvtColor(to_uint8(image), cv2.COLOR_GRAY2RGB)  # a new array


def overlay(
    image_display: np.ndarray,
    mask: np.ndarray,
    lesions: list[Lesion],
    *,
    colour: tuple[int, int, int] = (255, 64, 0),
    alpha: float = 0.25,
) -> np.ndarray:
    """Draw the mask tint, lesion contours, boxes and ids on the image.

    Args:
        image_display: float in [0, 1] (or uint8), ``(H, W)`` or ``(H, W, 3)`` RGB.
        mask: ``(H, W)`` bool, same size.
        lesions: from ``MaskResult.lesions``.
        colour: RGB.
        alpha: opacity of the mask tint.

    Returns:
        ``(H, W, 3)`` uint8 RGB, e.g. for ``overlay.png``.
    """
    rgb = _to_rgb_uint8(image_display)  # (H, W, 3)
    if mask.shape != rgb.shape[:2]:
        raise InvalidGeometryError(f"mask {mask.shape} and image {rgb.shape[:2]} differ in size")
    tint = np.asarray(colour, np.float32)
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))  # tint only where the mask lies
    box = rgb[y : y + h, x : x + w]
    inside = mask[y : y + h, x : x + w].astype(bool)
    box[inside] = np.rint((1 - alpha) * box[inside] + alpha * tint).astype(np.uint8)
    thickness = max(1, round(max(rgb.shape[:2]) / 400))
    for lesion in lesions:
        points = np.asarray(lesion.contour, np.int32).reshape(-1, 1, 2)
        cv2.polylines(rgb, [points], True, colour, thickness, cv2.LINE_AA)
        x, y, w, h = lesion.bbox
        cv2.rectangle(rgb, (x, y), (x + w - 1, y + h - 1), colour, thickness)
        origin = (x, max(0, y - 3 * thickness))
        font = cv2.FONT_HERSHEY_SIMPLEX
        cv2.putText(rgb, str(lesion.id), origin, font, 0.4 * thickness, colour, thickness)
    return rgb
