"""PNG plots of a report, drawn with OpenCV (the serving environment has no matplotlib).

Every function returns an RGB ``(H, W, 3)`` uint8 image; ``png_bytes`` encodes one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

WIDTH, HEIGHT = 520, 400
LEFT, RIGHT, TOP, BOTTOM = 62, 20, 34, 52
FONT = cv2.FONT_HERSHEY_SIMPLEX
BLUE, ORANGE, GREY, BLACK = (31, 119, 180), (230, 120, 20), (170, 170, 170), (0, 0, 0)
GREEN, RED = (0, 200, 0), (235, 30, 30)


@dataclass(frozen=True)
class Series:
    xs: Sequence[float]
    ys: Sequence[float]
    colour: tuple[int, int, int] = BLUE
    label: str = ""
    markers: bool = False


class Axes:
    """A plot area mapping data ``xlim`` x ``ylim`` (x optionally log2) onto the canvas."""

    def __init__(
        self, title: str, xlabel: str, ylabel: str, xlim: tuple[float, float],
        ylim: tuple[float, float], log2x: bool = False,
    ) -> None:  # fmt: skip
        self.image = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
        self.xlim, self.ylim, self.log2x = xlim, ylim, log2x
        _text(self.image, title, (LEFT, 22), 0.55, 1)
        _text(self.image, xlabel, (LEFT + 120, HEIGHT - 10), 0.45)
        rotated = np.full((22, HEIGHT - TOP - BOTTOM, 3), 255, np.uint8)
        _text(rotated, ylabel, (10, 16), 0.45)
        self.image[TOP : HEIGHT - BOTTOM, 2:24] = np.rot90(rotated)
        cv2.rectangle(self.image, (LEFT, TOP), (WIDTH - RIGHT, HEIGHT - BOTTOM), BLACK, 1)

    def _x(self, value: float) -> float:
        return float(np.log2(value)) if self.log2x else value

    def point(self, x: float, y: float) -> tuple[int, int]:
        x0, x1 = (self._x(v) for v in self.xlim)
        px = LEFT + (self._x(x) - x0) / (x1 - x0) * (WIDTH - LEFT - RIGHT)
        py = (
            HEIGHT
            - BOTTOM
            - (y - self.ylim[0]) / (self.ylim[1] - self.ylim[0]) * (HEIGHT - TOP - BOTTOM)
        )
        return round(px), round(py)

    def ticks(self, xs: Sequence[float], ys: Sequence[float]) -> None:
        for x in xs:
            px, py = self.point(x, self.ylim[0])
            cv2.line(self.image, (px, py), (px, py + 4), BLACK, 1)
            _text(self.image, f"{x:g}", (px - 10, py + 18), 0.38)
        for y in ys:
            px, py = self.point(self.xlim[0], y)
            cv2.line(self.image, (px - 4, py), (px, py), BLACK, 1)
            _text(self.image, f"{y:g}", (px - 34, py + 4), 0.38)

    def plot(self, series: Series) -> None:
        points = [self.point(x, y) for x, y in zip(series.xs, series.ys, strict=True)]
        if len(points) > 1:
            cv2.polylines(
                self.image, [np.array(points, np.int32)], False, series.colour, 2, cv2.LINE_AA
            )
        if series.markers:
            for p in points:
                cv2.circle(self.image, p, 4, series.colour, -1, cv2.LINE_AA)

    def legend(self, items: Sequence[tuple[str, tuple[int, int, int]]]) -> None:
        for k, (label, colour) in enumerate(items):
            y = TOP + 18 + 18 * k
            cv2.line(self.image, (WIDTH - 200, y - 4), (WIDTH - 180, y - 4), colour, 3)
            _text(self.image, label, (WIDTH - 174, y), 0.4)


def _text(
    image: np.ndarray, text: str, origin: tuple[int, int], scale: float, bold: int = 0
) -> None:
    cv2.putText(image, text, origin, FONT, scale, BLACK, 1 + bold, cv2.LINE_AA)


def roc_plot(probs: np.ndarray, labels: np.ndarray, auc: float | None) -> np.ndarray:
    """ROC curve (every threshold) with the chance diagonal."""
    order = np.argsort(-probs, kind="stable")
    y = labels[order]
    tpr = np.concatenate([[0.0], np.cumsum(y) / max(y.sum(), 1)])
    fpr = np.concatenate([[0.0], np.cumsum(1 - y) / max((1 - y).sum(), 1)])
    title = f"ROC (AUC {auc:.3f})" if auc is not None else "ROC"
    axes = Axes(title, "1 - specificity", "sensitivity", (0, 1), (0, 1))
    axes.ticks([0, 0.25, 0.5, 0.75, 1], [0, 0.25, 0.5, 0.75, 1])
    axes.plot(Series([0, 1], [0, 1], GREY))
    axes.plot(Series(list(fpr), list(tpr)))
    return axes.image


def froc_plot(
    fp_per_image: Sequence[float], sensitivity: Sequence[float], rates: Sequence[float],
    points: Sequence[float | None],
) -> np.ndarray:  # fmt: skip
    """FROC curve on a log2 axis from the lowest to the highest fixed rate, points marked."""
    lo, hi = rates[0], rates[-1]
    xs = [min(max(x, lo), hi) for x in fp_per_image]
    axes = Axes("FROC", "false positives per image", "sensitivity", (lo, hi), (0, 1), True)
    axes.ticks(list(rates), [0, 0.25, 0.5, 0.75, 1])
    axes.plot(Series(xs, list(sensitivity)))
    known = [(r, p) for r, p in zip(rates, points, strict=True) if p is not None]
    axes.plot(Series([r for r, _ in known], [p for _, p in known], ORANGE, markers=True))
    return axes.image


def reliability_plot(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> np.ndarray:
    """Observed malignant share against mean predicted probability, per equal-width bin."""
    edges = np.linspace(0, 1, n_bins + 1)
    bins = np.clip(np.digitize(probs, edges[1:-1], right=True), 0, n_bins - 1)
    xs, ys = [], []
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            xs.append(float(probs[inside].mean()))
            ys.append(float(labels[inside].mean()))
    axes = Axes(
        "Reliability (15 bins)", "predicted P(malignant)", "observed malignant", (0, 1), (0, 1)
    )
    axes.ticks([0, 0.25, 0.5, 0.75, 1], [0, 0.25, 0.5, 0.75, 1])
    axes.plot(Series([0, 1], [0, 1], GREY))
    axes.plot(Series(xs, ys, ORANGE, markers=True))
    return axes.image


def histogram_plot(values: np.ndarray, title: str, xlabel: str, bins: int = 20) -> np.ndarray:
    """Histogram of values in [0, 1]."""
    counts, edges = np.histogram(values, bins=bins, range=(0, 1))
    top = max(int(counts.max()) if counts.size else 1, 1)
    axes = Axes(title, xlabel, "images", (0, 1), (0, top * 1.1))
    step = max(1, top // 5)
    axes.ticks([0, 0.25, 0.5, 0.75, 1], list(range(0, top + 1, step)))
    for count, a, b in zip(counts, edges[:-1], edges[1:], strict=True):
        if count:
            cv2.rectangle(axes.image, axes.point(a, 0), axes.point(b, count), BLUE, -1)
            cv2.rectangle(axes.image, axes.point(a, 0), axes.point(b, count), BLACK, 1)
    return axes.image


def thumbnail(
    display: np.ndarray,
    truth_contours: Sequence[np.ndarray],
    pred_contours: Sequence[np.ndarray],
    caption: str,
    side: int = 220,
) -> np.ndarray:
    """The image with truth (green) and prediction (red) outlines, scaled to ``side`` px."""
    rgb = display if display.ndim == 3 else np.repeat(display[:, :, None], 3, axis=2)
    rgb = np.ascontiguousarray(rgb)
    thick = max(1, round(max(rgb.shape[:2]) / side))
    cv2.drawContours(rgb, [c.astype(np.int32) for c in truth_contours], -1, GREEN, thick + 1)
    cv2.drawContours(rgb, [c.astype(np.int32) for c in pred_contours], -1, RED, thick)
    scale = side / max(rgb.shape[:2])
    small = cv2.resize(
        rgb,
        (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))),
        interpolation=cv2.INTER_AREA,
    )
    tile = np.full((side + 22, side, 3), 255, np.uint8)
    tile[: small.shape[0], : small.shape[1]] = small
    _text(tile, caption[:34], (2, side + 16), 0.4)
    return tile


def grid(tiles: Sequence[np.ndarray], columns: int = 4) -> np.ndarray:
    """Tiles of one size laid out in rows of ``columns``."""
    if not tiles:
        return np.full((40, 200, 3), 255, np.uint8)
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    canvas = np.full((rows * (h + 6), columns * (w + 6), 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        canvas[r * (h + 6) : r * (h + 6) + h, c * (w + 6) : c * (w + 6) + w] = tile
    return canvas


def png_bytes(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGB image
        raise ValueError("PNG encoding failed")
    return bytes(data.tobytes())
