"""Histopathology: single patches, and large H&E tiles cut into patch-size windows.

Window size: the patch size of the release the model was trained on, in original pixels (IDC:
50 x 50, "ps50"), else the model input size; ``TileOptions.window`` overrides it. An image no
larger than ``TILE_FACTOR`` windows a side is one patch (resized to the model input as in
training). A larger one is tiled with stride = window x (1 - overlap); the last row and column
of windows are moved back to end at the image edge, so every pixel is covered. A window is
background and skipped when at least 80 % of its pixels are white (luma >= 0.85 and chroma
< 0.1). Each tissue window is preprocessed with the card's config and classified.

Input rule of the stage (registered here with ``stages.stage_rule``, replacing the earlier one
that refused every RGB image without colour): one sample per pixel is refused with
``wrong_stage`` (H&E-stained tissue is colour), as are DICOM modalities other than SM, GM (and XC,
with a warning). On the pixels (``check_tissue``): an RGB image with no colour (no pixel more
coloured than ``CHROMA_GREY``) that is neither mostly white nor uniform is a grey image stored as
RGB (a radiograph, say) and is refused too; a single patch that is mostly white (the background
rule below) or uniform (luma standard deviation under ``UNIFORM_LUMA_STD``) is analysed, with a
``low_tissue`` warning, since its score rests on little tissue.

Image score (``Aggregate``): ``top_k_mean`` (default, k = 3) is the mean of the k highest window
probabilities, less swayed by one noisy window than ``max``; with k = 1 the two agree. The
heatmap paints each window's probability over its pixels (overlapping windows averaged), and
the mask and lesions are the heatmap thresholded at the card's malignancy threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import cv2
import numpy as np

from imaging.mammo import to_grey
from imaging.preprocess import PreprocessConfig, preprocess, to_uint8
from models_registry.card import ModelCard, Stage
from service.inference.stages import (
    CHROMA_GREY,
    SAMPLE_SIDE,
    ImageFacts,
    WrongStageError,
    _modality,
    _refuse,
    chroma,
    stage_rule,
)

if TYPE_CHECKING:
    from service.inference.result import Histopathology

TILE_FACTOR = 1.5
WHITE_LUMA = 0.85
WHITE_CHROMA = 0.1
BACKGROUND_FRACTION = 0.8
UNIFORM_LUMA_STD = 0.02  # a patch whose luma varies less than this shows no structure
LOW_TISSUE = "low_tissue"  # warning code: the start of the warning's text
SOURCE_PATCH_HW: dict[str, tuple[int, int]] = {"idc": (50, 50)}  # training data set -> patch


class Aggregate(StrEnum):
    MAX = "max"
    TOP_K_MEAN = "top_k_mean"


@dataclass(frozen=True)
class TileOptions:
    """How large images are tiled and scored."""

    window: tuple[int, int] | None = None  # (height, width); None: from the card
    overlap: float = 0.0  # share of a window that the next one overlaps, in [0, 0.9]
    aggregate: Aggregate = Aggregate.TOP_K_MEAN
    top_k: int = 3
    skip_background: bool = True
    heatmap_alpha: float = 0.4

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap <= 0.9:
            raise ValueError(f"overlap must lie in [0, 0.9], got {self.overlap}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.window is not None and min(self.window) < 1:
            raise ValueError(f"window must be positive (height, width), got {self.window}")


@dataclass(frozen=True)
class Window:
    """A window in original pixels; ``tissue`` False means skipped as background."""

    y: int
    x: int
    height: int
    width: int
    tissue: bool = True


@dataclass(frozen=True)
class TilePlan:
    """The windows of one image."""

    image_hw: tuple[int, int]
    window: tuple[int, int]
    stride: tuple[int, int]
    windows: tuple[Window, ...]
    tiled: bool

    @property
    def tissue(self) -> list[Window]:
        return [w for w in self.windows if w.tissue]


def window_size(card: ModelCard, options: TileOptions) -> tuple[int, int]:
    """Window ``(height, width)`` in original pixels (see the module docstring)."""
    if options.window is not None:
        return options.window
    data = card.training.config.get("data")
    dataset = data.get("dataset") if isinstance(data, dict) else None
    return SOURCE_PATCH_HW.get(str(dataset), (card.input.size[0], card.input.size[1]))


def _starts(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)  # the last window ends at the edge
    return starts


@dataclass(frozen=True)
class TissueFacts:
    """Pixel statistics of an RGB image (or patch) that the tissue rules look at."""

    white_fraction: float  # share of white-glass pixels (luma >= 0.85 and chroma < 0.1)
    luma_std: float
    max_chroma: float

    @property
    def low_tissue(self) -> bool:
        """Mostly white glass, or uniform: too little tissue for a score to rest on."""
        return self.white_fraction >= BACKGROUND_FRACTION or self.luma_std < UNIFORM_LUMA_STD


def tissue_facts(rgb: np.ndarray) -> TissueFacts:
    """``TissueFacts`` of an RGB ``(h, w, 3)`` [0, 1] image (large ones on ~512 x 512 samples)."""
    step = max(1, max(rgb.shape[:2]) // SAMPLE_SIDE)
    sample = rgb[::step, ::step]  # (h', w', 3)
    luma = to_grey(sample)  # (h', w')
    spread = chroma(sample)  # (h', w')
    white = (luma >= WHITE_LUMA) & (spread < WHITE_CHROMA)
    return TissueFacts(float(white.mean()), float(luma.std()), float(spread.max()))


def is_background(patch: np.ndarray) -> bool:
    """True when at least 80 % of the pixels of an RGB ``(h, w, 3)`` [0, 1] patch are white."""
    if patch.ndim != 3:
        return False
    return tissue_facts(patch).white_fraction >= BACKGROUND_FRACTION


@stage_rule(Stage.HISTOPATHOLOGY)
def histopathology_rule(facts: ImageFacts) -> list[str]:
    """The stage's metadata rule (see the module docstring); RGB goes on to ``check_tissue``."""
    _, warnings = _modality(Stage.HISTOPATHOLOGY, facts, {"SM", "GM"}, {"XC"})
    if not facts.colour:
        rule = "H&E-stained tissue is a colour image, not one sample per pixel"
        raise _refuse(Stage.HISTOPATHOLOGY, facts, rule)
    return warnings


def check_tissue(display: np.ndarray, plan: TilePlan) -> list[str]:
    """The stage's pixel rule: warnings for an image ``(H, W, 3)`` in [0, 1] and its plan.

    Raises:
        WrongStageError: an RGB image without colour that shows structure (a grey image).
    """
    if display.ndim != 3:
        return []  # one sample per pixel: refused by ``histopathology_rule``
    facts = tissue_facts(display)
    rows, columns = plan.image_hw
    if facts.max_chroma <= CHROMA_GREY and not facts.low_tissue:
        raise WrongStageError(
            f"a {rows}x{columns} RGB image without colour does not fit stage histopathology: "
            "H&E-stained tissue is a colour image",
            stage=Stage.HISTOPATHOLOGY.value,
            rows=rows,
            columns=columns,
        )
    if plan.tiled or not facts.low_tissue:
        return []  # a tile's background windows are skipped, and said so, window by window
    return [
        f"{LOW_TISSUE}: the patch shows little tissue ({facts.white_fraction:.0%} white glass, "
        f"luma standard deviation {facts.luma_std:.3f}); its score rests on what there is"
    ]


def plan_tiles(display: np.ndarray, window: tuple[int, int], options: TileOptions) -> TilePlan:
    """Lay windows over a display image ``(H, W)`` or ``(H, W, 3)``."""
    h, w = int(display.shape[0]), int(display.shape[1])
    if h <= window[0] * TILE_FACTOR and w <= window[1] * TILE_FACTOR:
        return TilePlan((h, w), (h, w), (h, w), (Window(0, 0, h, w),), tiled=False)
    win = (min(window[0], h), min(window[1], w))
    stride = tuple(max(1, round(s * (1.0 - options.overlap))) for s in win)
    windows = []
    for y in _starts(h, win[0], stride[0]):
        for x in _starts(w, win[1], stride[1]):
            patch = display[y : y + win[0], x : x + win[1]]
            tissue = not (options.skip_background and is_background(patch))
            windows.append(Window(y, x, win[0], win[1], tissue))
    return TilePlan((h, w), win, (stride[0], stride[1]), tuple(windows), tiled=True)


def window_batch(display: np.ndarray, plan: TilePlan, config: PreprocessConfig) -> np.ndarray:
    """The tissue windows preprocessed as in training: ``(K, C, H, W)`` float32."""
    arrays = [
        preprocess(display[w.y : w.y + w.height, w.x : w.x + w.width], config)[0]  # (C, H, W)
        for w in plan.tissue
    ]
    if not arrays:
        return np.zeros((0, config.channels, *config.input_size), np.float32)
    return np.stack(arrays)


def aggregate(probabilities: np.ndarray, options: TileOptions) -> float | None:
    """The image score from window probabilities; None when no window held tissue."""
    if probabilities.size == 0:
        return None
    if options.aggregate is Aggregate.MAX:
        return float(probabilities.max())
    top = np.sort(probabilities)[::-1][: options.top_k]
    return float(top.mean())


def probability_map(plan: TilePlan, probabilities: np.ndarray) -> np.ndarray:
    """``(H, W)`` float32: each tissue window's probability over its pixels, overlaps averaged;
    NaN where no tissue window lies."""
    windows = [(w.x, w.y, w.width, w.height) for w in plan.tissue]
    return _window_map(plan.image_hw, windows, [float(p) for p in probabilities])


def _window_map(
    image_hw: tuple[int, int], windows: Sequence[tuple[int, int, int, int]], probs: Sequence[float]
) -> np.ndarray:
    """``(H, W)`` float32 of ``(x, y, width, height)`` windows' probabilities, overlaps
    averaged, NaN outside every window."""
    total = np.zeros(image_hw, np.float64)
    count = np.zeros(image_hw, np.int32)
    for (x, y, width, height), p in zip(windows, probs, strict=True):
        total[y : y + height, x : x + width] += p
        count[y : y + height, x : x + width] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


def result_heatmap(display: np.ndarray, histology: Histopathology, alpha: float) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB: the heatmap overlay of a result, drawn from its patches (window
    and calibrated probability each) on the ``(H, W, 3)`` display image. Drawn when first asked
    for (``Analysis.overlay``), from the job's stored display image and result alike, so the
    request path pays for neither the drawing nor its PNG."""
    windows = [(p.x, p.y, p.width, p.height) for p in histology.patches]
    prob_map = _window_map(display.shape[:2], windows, [p.probability for p in histology.patches])
    return heatmap_overlay(display, prob_map, alpha)


def heatmap_overlay(display: np.ndarray, prob_map: np.ndarray, alpha: float) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB: the image (float in [0, 1], or uint8), JET colours blended where
    a probability exists."""
    rgb = display.copy() if display.dtype == np.uint8 else to_uint8(display)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)  # (H, W, 3)
    covered = ~np.isnan(prob_map)
    if not covered.any():
        return rgb
    levels = to_uint8(np.nan_to_num(prob_map, nan=0.0))  # (H, W)
    colours = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blend = np.rint((1 - alpha) * rgb + alpha * colours.astype(np.float32)).astype(np.uint8)
    rgb[covered] = blend[covered]
    return rgb
