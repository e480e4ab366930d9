"""Near-duplicate images: the same frame stored twice, rescaled or cropped differently.

BUSI holds such copies, sometimes under two classes (Al-Dhabyani et al. 2020 give no patient
ids), so a fair split must keep them on one side. Two checks, both on a grey copy of each image:

1. Perceptual hash (``imagehash.phash`` of a 64 x 64 downscale): pairs within
   ``hash_distance`` bits of 64. Catches exact copies, rescaled copies, small crops and
   re-encodings. Misses crops that remove more than a few per cent of a side (the hash sees the
   whole frame) and copies that were flipped.
2. Crop match: every image is shortlisted against its ``neighbours`` nearest images by hash
   distance and by grey-level histogram (cheap, O(n^2) on 64-bit hashes and 32-bin
   histograms); for each shortlisted pair, the central 70 % of one image is searched in the
   other by normalised cross-correlation (``cv2.matchTemplate``) over widths of 50-100 % of the
   other image, coarse at 32 px, refined at 64 and 128 px; a pair is a duplicate where the refined
   correlation reaches ``crop_correlation``. Catches crops keeping at least half the other image's
   width (any height), in either direction, rescaled or not. Misses copies that were flipped,
   rotated, or cropped to less than half, and pairs the cheap shortlist ranks too far apart.

On the real BUSI (596 images, shared-data copy) the crop check adds 14 pairs to the 161 the hash
finds: re-cropped copies score 0.984-0.998, successive frames of one lesion 0.94-0.98, and the
best unrelated pair 0.933, hence the 0.95 default (frames of one lesion that pass are welcome:
they belong on one side too). The whole search takes a few seconds there: reading the images and
~3,800 shortlisted pairs, most rejected at the coarse level.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import imagehash
import numpy as np
from PIL import Image

from training.data.records import DatasetFormatError, Sample


@dataclass(frozen=True)
class DuplicateConfig:
    """Thresholds of ``find_near_duplicates`` (defaults tuned on BUSI, see the module)."""

    hash_distance: int = 8
    crop_correlation: float = 0.95
    coarse_gate: float = 0.9
    neighbours: int = 5
    min_fraction: float = 0.5
    steps: int = 7
    fine_steps: int = 7
    widths: tuple[int, ...] = (32, 64, 128)


@dataclass(frozen=True)
class DuplicatePair:
    """Two sample ids found to show the same frame, the check that found it and its score."""

    a: str
    b: str
    reason: str  # "phash" (score: Hamming distance) | "crop" (score: correlation)
    score: float


@dataclass(frozen=True, eq=False)
class _Features:
    hash_bits: np.ndarray  # (64,) bool
    histogram: np.ndarray  # (32,) sqrt of the normalised grey histogram
    levels: tuple[np.ndarray, ...]  # thumbnails (h, width) float32, coarse to fine
    coarse: tuple[tuple[float, np.ndarray], ...]  # (fraction, centre patch) at level 0
    flat: bool  # the centre holds no structure to correlate


class UnionFind:
    """Disjoint sets over string keys (path halving, union by size)."""

    def __init__(self, keys: list[str]) -> None:
        self._parent = {key: key for key in keys}
        self._size = dict.fromkeys(keys, 1)

    def find(self, key: str) -> str:
        parent = self._parent
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self._size[ra] < self._size[rb]:
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._size[ra] += self._size[rb]

    def groups(self) -> dict[str, list[str]]:
        """Root -> members, members in insertion order."""
        out: dict[str, list[str]] = {}
        for key in self._parent:
            out.setdefault(self.find(key), []).append(key)
        return out


def find_near_duplicates(
    samples: list[Sample], config: DuplicateConfig | None = None
) -> list[DuplicatePair]:
    """Pairs of samples that show the same frame (see the module for what is caught)."""
    config = config or DuplicateConfig()
    if len(samples) < 2:
        return []
    features = [_features(s.image_path, config) for s in samples]
    bits = np.stack([f.hash_bits for f in features]).astype(np.uint8)  # (N, 64)
    distance = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)  # (N, N)
    hists = np.stack([f.histogram for f in features])  # (N, 32)
    pairs: list[DuplicatePair] = []
    close = np.argwhere(np.triu(distance <= config.hash_distance, k=1))
    for i, j in close:
        pairs.append(DuplicatePair(samples[i].id, samples[j].id, "phash", float(distance[i, j])))
    found = {(int(i), int(j)) for i, j in close}
    for i, j in _shortlist(distance, 1.0 - hists @ hists.T, config.neighbours):
        if (i, j) in found:
            continue
        score = _crop_score(features[i], features[j], config)
        if score >= config.crop_correlation:
            pairs.append(DuplicatePair(samples[i].id, samples[j].id, "crop", round(score, 4)))
    return sorted(pairs, key=lambda p: (p.a, p.b))


def _shortlist(distance: np.ndarray, hist_distance: np.ndarray, k: int) -> list[tuple[int, int]]:
    """Pairs (i < j) where j is among i's k nearest by either measure, or i among j's."""
    n = distance.shape[0]
    k = min(k, n - 1)
    pairs: set[tuple[int, int]] = set()
    for matrix in (distance.astype(np.float64), hist_distance.astype(np.float64)):
        matrix = matrix.copy()
        np.fill_diagonal(matrix, np.inf)
        nearest = np.argpartition(matrix, k - 1, axis=1)[:, :k]  # (N, k)
        for i in range(n):
            pairs.update((min(i, int(j)), max(i, int(j))) for j in nearest[i])
    return sorted(pairs)


def _features(path: Path, config: DuplicateConfig) -> _Features:
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        raise DatasetFormatError(f"{path} could not be decoded for duplicate search")
    small = cv2.resize(grey, (64, 64), interpolation=cv2.INTER_AREA)
    hash_bits = np.asarray(imagehash.phash(Image.fromarray(small)).hash, bool).ravel()
    histogram = cv2.calcHist([grey], [0], None, [32], [0, 256]).ravel()
    histogram = np.sqrt(histogram / max(1.0, float(histogram.sum())))
    levels = _pyramid(grey, config.widths)
    centre = _centre(levels[0])
    fractions = np.linspace(config.min_fraction, 1.0, config.steps)
    coarse = tuple((float(f), _patch(centre, levels[0].shape[1], f)) for f in fractions)
    return _Features(hash_bits, histogram, levels, coarse, float(centre.std()) < 1.0)


def _pyramid(grey: np.ndarray, widths: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """float32 thumbnails at ``widths``, each made from the next larger one (cheaper)."""
    levels: dict[int, np.ndarray] = {}
    source = grey
    for width in sorted(widths, reverse=True):
        height = max(4, round(grey.shape[0] * width / grey.shape[1]))
        source = cv2.resize(source, (width, height), interpolation=cv2.INTER_AREA)
        levels[width] = source.astype(np.float32)
    return tuple(levels[width] for width in widths)


def _centre(thumb: np.ndarray) -> np.ndarray:
    """The central 70 % of a thumbnail (what a crop of a few per cent per side still holds)."""
    h, w = thumb.shape
    return thumb[round(h * 0.15) : round(h * 0.85), round(w * 0.15) : round(w * 0.85)]


def _patch(centre: np.ndarray, width: int, fraction: float) -> np.ndarray:
    """``centre`` rescaled as if its whole image were ``fraction`` x ``width`` pixels wide."""
    scale = fraction * width / (centre.shape[1] / 0.7)
    size = (max(3, round(centre.shape[1] * scale)), max(3, round(centre.shape[0] * scale)))
    return cv2.resize(centre, size, interpolation=cv2.INTER_AREA)


def _crop_score(a: _Features, b: _Features, config: DuplicateConfig) -> float:
    """Best correlation of either image's centre found inside the other, refined coarse to fine.

    Level 0 tries ``steps`` widths over [min_fraction, 1] in both directions; each further level
    (twice the resolution) keeps the better direction and tries ``fine_steps`` widths spanning
    the previous level's step around its best width (the correlation peak is sharp at 128 px:
    a 1 % scale error costs ~0.03).
    """
    if a.flat or b.flat:
        return -1.0  # a flat centre correlates with anything; phash still covers such images
    best_ab, best_ba = _best(a.levels[0], b.coarse), _best(b.levels[0], a.coarse)
    (score, fraction), outer, inner = (best_ab, a, b) if best_ab >= best_ba else (best_ba, b, a)
    if score < config.coarse_gate:
        return score  # true crops score >= 0.95 already at level 0 on BUSI
    step = (1.0 - config.min_fraction) / max(1, config.steps - 1)
    for level in range(1, len(outer.levels)):
        centre, width = _centre(inner.levels[level]), outer.levels[level].shape[1]
        around = fraction + step * np.linspace(-1.0, 1.0, config.fine_steps)
        score, fraction = _best(
            outer.levels[level], [(f, _patch(centre, width, f)) for f in around]
        )
        step *= 2.0 / max(1, config.fine_steps - 1)
    return score


def _best(outer: np.ndarray, patches: Iterable[tuple[float, np.ndarray]]) -> tuple[float, float]:
    """``(correlation, fraction)`` of the best-matching patch; ``(-1, 0)`` where none fits."""
    best = (-1.0, 0.0)
    for fraction, patch in patches:
        if patch.shape[0] > outer.shape[0] or patch.shape[1] > outer.shape[1]:
            continue
        score = float(cv2.matchTemplate(outer, patch, cv2.TM_CCOEFF_NORMED).max())
        if score > best[0]:
            best = (score, fraction)
    return best
