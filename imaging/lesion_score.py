"""A lesion's detection score from what the mask says about it: a fitted logistic model.

Without one, a region's detection ``score`` is its peak probability. A segmentation network's
peak alone ranks its regions poorly where false marks are large, confident patches of dense
tissue: ``LesionScorer`` combines a region's peak and mean probability (as logits) and its area
(the log of its share of the image) into ``sigmoid(intercept + coefficients . features)``, the
probability that the region is a true lesion, fitted by ``breastdx lesion-score`` on the
regions the model marks on training images (a region is true when it hits a true lesion under
the FROC's hit rule, ``imaging.lesion_match``) and carried on the model card. Serving and
evaluation compute the same features from the same probability map (``imaging.postprocess``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FEATURES = ("peak_logit", "mean_logit", "log_area_fraction")
EPS = 1e-3  # probabilities are clipped to [EPS, 1 - EPS] before the logit (as served: 4 decimals)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), EPS, 1.0 - EPS)
    return np.log(p / (1.0 - p))


def region_features(
    peaks: np.ndarray, means: np.ndarray, areas: np.ndarray, image_area: int
) -> np.ndarray:
    """``(K, len(FEATURES))`` features of K regions: peak and mean probability, area (pixels)."""
    if image_area <= 0:
        raise ValueError(f"image_area must be > 0, got {image_area}")
    areas = np.maximum(np.asarray(areas, np.float64), 1.0)
    return np.stack(
        [_logit(peaks), _logit(means), np.log(areas / float(image_area))], axis=-1
    ).reshape(-1, len(FEATURES))


@dataclass(frozen=True)
class LesionScorer:
    """``sigmoid(intercept + coefficients . features)`` over ``FEATURES``."""

    coefficients: tuple[float, ...]
    intercept: float

    def __post_init__(self) -> None:
        if len(self.coefficients) != len(FEATURES):
            raise ValueError(
                f"a lesion scorer takes {len(FEATURES)} coefficients ({', '.join(FEATURES)}), "
                f"got {len(self.coefficients)}"
            )
        if not all(np.isfinite([*self.coefficients, self.intercept])):
            raise ValueError("a lesion scorer's coefficients must be finite")

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """``(K,)`` scores in (0, 1) of ``(K, F)`` features."""
        z = self.intercept + np.asarray(features, np.float64) @ np.asarray(self.coefficients)
        return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))


def fit_scorer(
    features: np.ndarray, labels: Sequence[bool] | np.ndarray, *, l2: float = 30.0
) -> LesionScorer:
    """Logistic regression by Newton's method, ``l2`` on the standardised coefficients (not the
    intercept), the standardisation folded back into the returned coefficients."""
    x = np.asarray(features, np.float64).reshape(-1, len(FEATURES))
    y = np.asarray(labels, np.float64).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} feature rows against {len(y)} labels")
    if len(set(y.tolist())) != 2:
        raise ValueError(
            "fitting a lesion score needs regions that hit a true lesion and regions that do "
            f"not; got {int(y.sum())} of {len(y)} hitting"
        )
    centre, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = np.c_[np.ones(len(x)), (x - centre) / scale]
    penalty = np.diag([0.0, *([float(l2)] * len(FEATURES))])
    w = np.zeros(z.shape[1])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -40.0, 40.0)))
        gradient = z.T @ (p - y) + penalty @ w
        hessian = (z * (p * (1.0 - p))[:, None]).T @ z + penalty + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if float(np.abs(step).max()) < 1e-10:
            break
    coefficients = w[1:] / scale
    intercept = float(w[0] - (coefficients * centre).sum())
    return LesionScorer(tuple(float(c) for c in coefficients), intercept)
