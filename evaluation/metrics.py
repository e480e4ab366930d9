"""Segmentation and classification metrics with bootstrap intervals, in numpy only.

This module never imports torch, so the service and the reports can use it too.

Segmentation (per image, on binary masks; any non-zero pixel is foreground):

- ``dice_score`` and ``iou_score`` of the foreground. Empty-mask rule: when prediction and truth
  are both empty the score is ``both_empty`` (default 1.0, a perfect answer; pass ``nan`` to leave
  such images out of the means); a non-empty prediction on an empty truth scores 0.0, and so does
  an empty prediction on a non-empty truth.
- ``miou_fg_bg``: the mean of the foreground and background IoU, "as in the paper" (its tables'
  IoU); ``pooled_miou_fg_bg`` accumulates the confusion over all images first (Keras ``MeanIoU``).
- ``pixel_accuracy``.

Classification (binary, malignant = 1; ``probs`` are P(malignant), shape ``(N,)`` or ``(N, 2)``):
accuracy, balanced accuracy, sensitivity (recall of malignant), specificity, precision, F1 (nan
when undefined, e.g. sensitivity without positives), ROC AUC (Mann-Whitney, ties count one half),
expected calibration error (Guo et al. 2017; top-label confidence, equal-width bins) and the
Brier score. ``bootstrap_ci`` gives percentile intervals, resampling images or whole groups.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from breastdx.errors import BreastdxError

FloatArray = NDArray[np.float64]


class MetricInputError(BreastdxError):
    """Inputs to a metric do not fit together or break its rule."""

    code = "metric_input_error"
    title = "Invalid metric input"


class MetricValue(NamedTuple):
    """A point estimate, its bootstrap interval and the number of samples it rests on."""

    value: float
    ci_low: float
    ci_high: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return self._asdict()


# --- segmentation ------------------------------------------------------------------------------


def _as_mask(mask: ArrayLike) -> NDArray[np.bool_]:
    array = np.asarray(mask)
    if array.dtype.kind == "f" and not np.isin(array, (0.0, 1.0)).all():
        raise MetricInputError("a float mask must hold only 0 and 1; threshold probabilities first")
    return array != 0


def mask_counts(pred: ArrayLike, truth: ArrayLike) -> tuple[int, int, int, int]:
    """Foreground TP, FP, FN, TN pixel counts of one predicted mask against its truth."""
    p, t = _as_mask(pred), _as_mask(truth)
    if p.shape != t.shape:
        raise MetricInputError(f"prediction shape {p.shape} must equal truth shape {t.shape}")
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    return tp, fp, fn, p.size - tp - fp - fn


def _ratio(numerator: float, denominator: float, both_empty: float) -> float:
    return both_empty if denominator == 0 else float(numerator / denominator)


def _dice(c: Sequence[float], both_empty: float) -> float:
    tp, fp, fn, _ = c
    return _ratio(2 * tp, 2 * tp + fp + fn, both_empty)


def _iou(c: Sequence[float], both_empty: float) -> float:
    tp, fp, fn, _ = c
    return _ratio(tp, tp + fp + fn, both_empty)


def _miou(c: Sequence[float], both_empty: float) -> float:
    tp, fp, fn, tn = c
    return 0.5 * (_ratio(tp, tp + fp + fn, both_empty) + _ratio(tn, tn + fp + fn, both_empty))


def _pixel_accuracy(c: Sequence[float]) -> float:
    tp, fp, fn, tn = c
    return _ratio(tp + tn, tp + fp + fn + tn, float("nan"))


def dice_score(pred: ArrayLike, truth: ArrayLike, *, both_empty: float = 1.0) -> float:
    """Foreground Dice 2 TP / (2 TP + FP + FN); ``both_empty`` when both masks are empty."""
    return _dice(mask_counts(pred, truth), both_empty)


def iou_score(pred: ArrayLike, truth: ArrayLike, *, both_empty: float = 1.0) -> float:
    """Foreground IoU TP / (TP + FP + FN); ``both_empty`` when both masks are empty."""
    return _iou(mask_counts(pred, truth), both_empty)


def miou_fg_bg(pred: ArrayLike, truth: ArrayLike, *, both_empty: float = 1.0) -> float:
    """Mean of foreground and background IoU of one image, as in the paper's tables.

    ``both_empty`` applies to each class (an all-foreground pair has no background)."""
    return _miou(mask_counts(pred, truth), both_empty)


def pixel_accuracy(pred: ArrayLike, truth: ArrayLike) -> float:
    """Share of pixels whose foreground/background label is right."""
    return _pixel_accuracy(mask_counts(pred, truth))


def pooled_miou_fg_bg(counts: ArrayLike) -> float:
    """Foreground/background mean IoU of per-image counts ``(N, 4)`` (TP, FP, FN, TN) summed
    over the images first, as Keras ``MeanIoU`` accumulates it."""
    return _miou(np.asarray(counts, dtype=np.float64).reshape(-1, 4).sum(axis=0), 1.0)


# --- classification ----------------------------------------------------------------------------


def _binary(probs: ArrayLike, labels: ArrayLike) -> tuple[FloatArray, NDArray[np.int64]]:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 2:
        p = p[:, 1]
    y = np.asarray(labels)
    if p.ndim != 1 or y.shape != p.shape:
        raise MetricInputError(
            f"probs must be (N,) or (N, 2) and labels (N,); got {p.shape} and {y.shape}"
        )
    if not np.isin(y, (0, 1)).all():
        raise MetricInputError("binary labels must be 0 (benign) or 1 (malignant)")
    return p, y.astype(np.int64)


def confusion(probs: ArrayLike, labels: ArrayLike, threshold: float = 0.5) -> dict[str, int]:
    """``{"tp", "fp", "fn", "tn"}`` with malignant predicted where P(malignant) >= threshold."""
    p, y = _binary(probs, labels)
    pred = p >= threshold
    return {
        "tp": int(np.sum(pred & (y == 1))),
        "fp": int(np.sum(pred & (y == 0))),
        "fn": int(np.sum(~pred & (y == 1))),
        "tn": int(np.sum(~pred & (y == 0))),
    }


def _safe(numerator: float, denominator: float) -> float:
    return float("nan") if denominator == 0 else numerator / denominator


def accuracy(probs: ArrayLike, labels: ArrayLike, threshold: float = 0.5) -> float:
    c = confusion(probs, labels, threshold)
    return _safe(c["tp"] + c["tn"], sum(c.values()))


def sensitivity(probs: ArrayLike, labels: ArrayLike, threshold: float = 0.5) -> float:
    """Recall of the malignant class, TP / (TP + FN)."""
    c = confusion(probs, labels, threshold)
    return _safe(c["tp"], c["tp"] + c["fn"])


def specificity(probs: ArrayLike, labels: ArrayLike, threshold: float = 0.5) -> float:
    """TN / (TN + FP)."""
    c = confusion(probs, labels, threshold)
    return _safe(c["tn"], c["tn"] + c["fp"])


def precision(probs: ArrayLike, labels: ArrayLike, threshold: float = 0.5) -> float:
    """TP / (TP + FP)."""
    c = confusion(probs, labels, threshold)
    return _safe(c["tp"], c["tp"] + c["fp"])


def balanced_accuracy(probs: ArrayLike, labels: ArrayLike, threshold: float = 0.5) -> float:
    """Mean of sensitivity and specificity."""
    sens, spec = sensitivity(probs, labels, threshold), specificity(probs, labels, threshold)
    return 0.5 * (sens + spec)


def f1_score(probs: ArrayLike, labels: ArrayLike, threshold: float = 0.5) -> float:
    """2 TP / (2 TP + FP + FN)."""
    c = confusion(probs, labels, threshold)
    return _safe(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"])


def average_ranks(values: ArrayLike) -> FloatArray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(np.asarray(values), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse.reshape(-1)]


def roc_auc(probs: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve by the Mann-Whitney U statistic; nan with one class only."""
    p, y = _binary(probs, labels)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(p)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _confidence_and_correct(
    probs: ArrayLike, labels: ArrayLike
) -> tuple[FloatArray, NDArray[np.bool_]]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)  # (N, 2)
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise MetricInputError(
            f"probs must be (N,) or (N, K), labels (N,); got {p.shape}, {y.shape}"
        )
    return p.max(axis=1), p.argmax(axis=1) == y


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """ECE (Guo et al. 2017): sum over equal-width confidence bins of |accuracy - confidence|
    weighted by the bin's share; bins are (lo, hi], the first also holds 0."""
    if n_bins < 1:
        raise MetricInputError(f"n_bins must be >= 1, got {n_bins}")
    confidence, correct = _confidence_and_correct(probs, labels)
    if confidence.size == 0:
        return float("nan")
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    bins = np.digitize(confidence, inner_edges, right=True)  # bin i holds (e_i, e_i+1]
    total = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        total += in_bin.sum() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(total / confidence.size)


def brier_score(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean squared error of P(malignant) against the 0/1 label."""
    p, y = _binary(probs, labels)
    return float(np.mean((p - y) ** 2)) if p.size else float("nan")


# --- bootstrap and summaries -------------------------------------------------------------------


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: ArrayLike,
    n_boot: int = 1000,
    seed: int = 0,
    by_group: ArrayLike | None = None,
    level: float = 0.95,
) -> MetricValue:
    """``metric_fn(*arrays)`` with a percentile bootstrap interval.

    Rows (axis 0 of every array) are resampled with replacement; with ``by_group`` (one id per
    row, e.g. patient) whole groups are resampled instead, keeping a patient's images together.
    Resamples where the metric is nan are left out of the percentiles. Deterministic in ``seed``.
    """
    data = [np.asarray(a) for a in arrays]
    n = len(data[0]) if data else 0
    if n == 0 or any(len(a) != n for a in data):
        raise MetricInputError("bootstrap needs non-empty arrays of one common length")
    if n_boot < 1 or not 0 < level < 1:
        raise MetricInputError("n_boot must be >= 1 and level in (0, 1)")
    members = _group_members(by_group, n)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for i in range(n_boot):
        if members is None:
            rows = rng.integers(0, n, size=n)
        else:
            picked = rng.integers(0, len(members), size=len(members))
            rows = np.concatenate([members[g] for g in picked])
        stats[i] = metric_fn(*(a[rows] for a in data))
    value = float(metric_fn(*data))
    tail = 100 * (1 - level) / 2
    if np.isnan(stats).all():
        return MetricValue(value, float("nan"), float("nan"), n)
    low, high = np.nanpercentile(stats, [tail, 100 - tail])
    return MetricValue(value, float(low), float(high), n)


def _group_members(by_group: ArrayLike | None, n: int) -> list[NDArray[np.int64]] | None:
    """Row indices of each group, or None to resample single rows."""
    if by_group is None:
        return None
    groups = np.asarray(by_group)
    if groups.shape != (n,):
        raise MetricInputError(f"by_group needs one id per row ({n}), got shape {groups.shape}")
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    return np.split(order, np.cumsum(np.bincount(inverse))[:-1])


def summarise_segmentation(
    preds: Sequence[ArrayLike],
    truths: Sequence[ArrayLike],
    *,
    both_empty: float = 1.0,
    n_boot: int = 1000,
    seed: int = 0,
    by_group: ArrayLike | None = None,
) -> dict[str, MetricValue]:
    """Mean per-image ``dice``, ``iou``, ``miou_fg_bg``, ``pixel_accuracy`` and the pooled
    ``miou_fg_bg_pooled``, each with a bootstrap interval over images (or groups)."""
    if len(preds) != len(truths) or not preds:
        raise MetricInputError("need one truth per prediction and at least one image")
    counts = np.array([mask_counts(p, t) for p, t in zip(preds, truths, strict=True)], dtype=float)
    per_image = {
        "dice": [_dice(c, both_empty) for c in counts],
        "iou": [_iou(c, both_empty) for c in counts],
        "miou_fg_bg": [_miou(c, both_empty) for c in counts],
        "pixel_accuracy": [_pixel_accuracy(c) for c in counts],
    }
    kw: dict[str, Any] = {"n_boot": n_boot, "seed": seed, "by_group": by_group}
    summary = {name: bootstrap_ci(_nanmean, np.array(v), **kw) for name, v in per_image.items()}
    summary["miou_fg_bg_pooled"] = bootstrap_ci(pooled_miou_fg_bg, counts, **kw)
    return summary


def _nanmean(values: FloatArray) -> float:
    return float("nan") if np.isnan(values).all() else float(np.nanmean(values))


def summarise_classification(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    threshold: float = 0.5,
    n_bins: int = 15,
    n_boot: int = 1000,
    seed: int = 0,
    by_group: ArrayLike | None = None,
) -> dict[str, MetricValue]:
    """Binary metrics (keys: accuracy, balanced_accuracy, sensitivity, specificity, precision,
    f1, auc, ece, brier), each with a bootstrap interval over samples (or groups)."""
    p, y = _binary(probs, labels)
    fns: dict[str, Callable[[FloatArray, NDArray[np.int64]], float]] = {
        "accuracy": lambda a, b: accuracy(a, b, threshold),
        "balanced_accuracy": lambda a, b: balanced_accuracy(a, b, threshold),
        "sensitivity": lambda a, b: sensitivity(a, b, threshold),
        "specificity": lambda a, b: specificity(a, b, threshold),
        "precision": lambda a, b: precision(a, b, threshold),
        "f1": lambda a, b: f1_score(a, b, threshold),
        "auc": roc_auc,
        "ece": lambda a, b: expected_calibration_error(a, b, n_bins),
        "brier": brier_score,
    }
    kw: dict[str, Any] = {"n_boot": n_boot, "seed": seed, "by_group": by_group}
    return {name: bootstrap_ci(fn, p, y, **kw) for name, fn in fns.items()}
