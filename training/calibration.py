"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"), numpy only.

One scalar T > 0 divides the logits; it is fitted on the validation split by minimising the
negative log-likelihood. The NLL is convex in 1/T, hence unimodal in log T, so a golden-section
search on log T over [``T_MIN``, ``T_MAX``] finds the minimum without gradients. Works for binary
logits ``(N,)`` / ``(N, 1)`` (sigmoid; labels 0/1, ``-1`` = unknown is left out) and multi-class
logits ``(N, K)`` (softmax; labels 0..K-1). T > 1 softens over-confident scores; the class ranking,
hence accuracy and AUC, never changes.

``decision_threshold`` then picks the cut-off on the calibrated P(malignant) that maximises
balanced accuracy on the same validation cases; the model card states it (``thresholds.
malignancy``), so the service's calls are the ones validation chose.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, replace

import numpy as np
from numpy.typing import ArrayLike, NDArray

from training.metrics import MetricInputError, expected_calibration_error

logger = logging.getLogger(__name__)

T_MIN = 0.05
T_MAX = 20.0
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...
UNKNOWN_LABEL = -1


def _prepare(logits: ArrayLike, labels: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Logits as ``(N,)`` (binary) or ``(N, K)``; unknown binary labels dropped; rules checked."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if z.ndim == 2 and z.shape[1] == 1:
        z = z[:, 0]
    if z.ndim not in (1, 2) or z.shape[0] != y.shape[0]:
        raise MetricInputError(f"logits must be (N,) or (N, K) with N labels; got {z.shape}")
    if z.ndim == 1:
        keep = y != UNKNOWN_LABEL
        z, y = z[keep], y[keep]
    classes = 2 if z.ndim == 1 else z.shape[1]
    if y.size == 0 or y.min() < 0 or y.max() >= classes:
        raise MetricInputError(f"labels must be class indices in 0..{classes - 1}, at least one")
    if not np.isfinite(z).all():
        raise MetricInputError("logits must be finite")
    return z, y


def _log_softmax(z: NDArray[np.float64]) -> NDArray[np.float64]:
    shifted = z - z.max(axis=1, keepdims=True)  # (N, K)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def nll(logits: ArrayLike, labels: ArrayLike, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``logits / temperature``."""
    z, y = _prepare(logits, labels)
    z = z / temperature
    if z.ndim == 1:  # -log sigmoid(+-z) = log(1 + exp(-+z)), computed stably
        signed = np.where(y == 1, z, -z)
        return float(np.mean(np.logaddexp(0.0, -signed)))
    return float(-np.mean(_log_softmax(z)[np.arange(y.size), y]))


def apply_temperature(logits: ArrayLike, temperature: float) -> NDArray[np.float64]:
    """``logits / temperature``; T must be > 0."""
    if not temperature > 0:
        raise MetricInputError(f"temperature must be > 0, got {temperature}")
    return np.asarray(logits, dtype=np.float64) / temperature


def probabilities(logits: ArrayLike, temperature: float = 1.0) -> NDArray[np.float64]:
    """Calibrated probabilities: sigmoid for ``(N,)`` logits, softmax over K for ``(N, K)``."""
    z = apply_temperature(logits, temperature)
    if z.ndim == 1:
        return np.exp(-np.logaddexp(0.0, -z))  # sigmoid, stable
    return np.exp(_log_softmax(z))


def fit_temperature(
    logits: ArrayLike, labels: ArrayLike, *, tol: float = 1e-4, max_iter: int = 200
) -> float:
    """The T > 0 minimising validation NLL, by golden-section search on log T.

    Args:
        logits: ``(N,)`` or ``(N, 1)`` binary logits, or ``(N, K)`` class logits.
        labels: 0/1 (binary; -1 = unknown, left out) or class indices.
        tol: Stop when the log T bracket is narrower than this.
        max_iter: Upper bound on iterations (the bracket shrinks by 0.618 each).
    """
    z, y = _prepare(logits, labels)
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = nll(z, y, math.exp(a)), nll(z, y, math.exp(b))
    for _ in range(max_iter):
        if hi - lo < tol:
            break
        if fa <= fb:  # the minimum lies in [lo, b]
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = nll(z, y, math.exp(a))
        else:  # the minimum lies in [a, hi]
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = nll(z, y, math.exp(b))
    temperature = math.exp((lo + hi) / 2.0)
    if min(temperature / T_MIN, T_MAX / temperature) < 1.01:
        logger.warning("fitted temperature %.3g is at the search bound", temperature)
    return temperature


def calibration_report(
    logits: ArrayLike, labels: ArrayLike, temperature: float, n_bins: int = 15
) -> dict[str, float]:
    """NLL and ECE before and after scaling by ``temperature`` (for the model card)."""
    z, y = _prepare(logits, labels)
    before, after = probabilities(z), probabilities(z, temperature)
    return {
        "temperature": float(temperature),
        "nll_before": nll(z, y),
        "nll_after": nll(z, y, temperature),
        "ece_before": expected_calibration_error(before, y, n_bins),
        "ece_after": expected_calibration_error(after, y, n_bins),
        "n": int(y.size),
    }


@dataclass(frozen=True)
class ThresholdChoice:
    """A decision threshold on P(malignant) and what it scored on the cases it was chosen on."""

    threshold: float  # malignant where probability >= threshold
    balanced_accuracy: float
    sensitivity: float
    specificity: float
    n: int
    temperature: float = 1.0  # the probabilities were softmax / sigmoid of logits / temperature

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def balanced_threshold(probs: ArrayLike, labels: ArrayLike) -> ThresholdChoice:
    """The threshold on P(malignant) ``(N,)`` that maximises balanced accuracy against 0/1 labels.

    Every distinct probability is a candidate cut (malignant where ``p >= cut``); the returned
    threshold lies midway between the best cut and the next lower probability, so it gives the
    same calls on these cases and sits away from them. Ties go to the lower threshold (the more
    sensitive call).
    """
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if p.shape != y.shape or not np.isin(y, (0, 1)).all():
        raise MetricInputError("need one 0/1 label per probability")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise MetricInputError("probabilities must be finite and in [0, 1]")
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if n_pos == 0 or n_neg == 0:
        raise MetricInputError("choosing a threshold needs both classes among the cases")
    cuts, index = np.unique(p, return_inverse=True)  # ascending distinct probabilities
    pos = np.bincount(index, weights=y, minlength=cuts.size)  # positives at each value
    neg = np.bincount(index, weights=1 - y, minlength=cuts.size)
    sens = np.cumsum(pos[::-1])[::-1] / n_pos  # called malignant: p >= cuts[i]
    spec = 1.0 - np.cumsum(neg[::-1])[::-1] / n_neg
    score = 0.5 * (sens + spec)
    best = int(np.flatnonzero(score == score.max())[0])  # lowest cut among ties
    threshold = cuts[best] if best == 0 else 0.5 * (cuts[best - 1] + cuts[best])
    return ThresholdChoice(
        threshold=float(threshold),
        balanced_accuracy=float(score[best]),
        sensitivity=float(sens[best]),
        specificity=float(spec[best]),
        n=int(y.size),
    )


def decision_threshold(
    logits: ArrayLike, labels: ArrayLike, temperature: float = 1.0
) -> ThresholdChoice:
    """``balanced_threshold`` on the calibrated P(malignant) of validation logits.

    Args:
        logits: ``(N, 2)`` class logits (softmax) or ``(N,)`` / ``(N, 1)`` malignancy logits
            (sigmoid); binary labels of -1 (unknown) are left out.
        labels: 0 (not malignant) or 1 (malignant) per case.
        temperature: the fitted temperature (``fit_temperature``), as the service applies it.
    """
    z, y = _prepare(logits, labels)
    if z.ndim == 2 and z.shape[1] != 2:
        raise MetricInputError(
            f"a decision threshold needs binary logits, got {z.shape[1]} classes"
        )
    probs = probabilities(z, temperature)
    malignant = probs[:, 1] if probs.ndim == 2 else probs  # (N,)
    return replace(balanced_threshold(malignant, y), temperature=float(temperature))
