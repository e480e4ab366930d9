"""The figures of one evaluated data set, from its case records, with 95 % bootstrap intervals.

Intervals are percentile bootstraps (``evaluation.metrics.bootstrap_ci``, fixed seed) that
resample PATIENTS where the data names them (all images of a drawn patient go in together), else
images. Undefined figures (no lesion image, one class only) are None.

- segmentation (cases with a lesion mask): mean per-image Dice and IoU over images that hold a
  lesion, and that Dice split in two: the share of lesion images the model left unmarked (Dice
  0) and the mean Dice over those it marked; Hausdorff-95 in pixels (and mm where the pixel
  size is known) over those images where the model marked something; the false-lesion rate,
  the share of lesion-free images on which the model marked any lesion;
- detection (mammography): FROC sensitivity at ``FP_RATES`` false positives per image and their
  mean, under ``lesions.HIT_RULE``, over every region the model proposes: the lesions, then the
  candidates the card's presence threshold dropped (each ranked by the same score), so
  the curve runs past the operating point; and the operating point itself (the lesions alone:
  sensitivity and false positives per image);
- classification (cases with a label): ROC AUC; sensitivity, specificity, balanced accuracy and
  accuracy at the card's threshold; ECE (15 bins) and the Brier score; for histopathology also
  per patient, the patient's probability being the mean of its patches' (label: malignant if
  any patch is).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from evaluation.lesions import FP_RATES, HIT_RULE, froc_curve, froc_points
from evaluation.metrics import MetricValue, bootstrap_ci, summarise_classification

SEED = 20261205
N_BOOT = 1000
CLASSIFICATION_KEYS = (
    "auc",
    "sensitivity",
    "specificity",
    "balanced_accuracy",
    "accuracy",
    "ece",
    "brier",
)
MARK_SCORE = {
    "score": "lesions are ranked by their own detection score (the pipeline's Lesion.score), "
    "followed by the regions the card's presence threshold dropped (ranked by the same score: "
    "the peak probability, or the card's fitted lesion score): the curve is that of the "
    "presence threshold swept",
    "mean_probability": "lesions are ranked by their mean pixel probability (the pipeline's "
    "Lesion.mean_probability): this model's lesions carry no detection score of their own",
}

Record = dict[str, Any]


def _clean(value: float) -> float | None:
    return round(float(value), 6) if np.isfinite(value) else None


def as_dict(metric: MetricValue) -> dict[str, float | int | None]:
    """JSON-ready: non-finite values become None."""
    return {
        "value": _clean(metric.value),
        "ci_low": _clean(metric.ci_low),
        "ci_high": _clean(metric.ci_high),
        "n": metric.n,
    }


def _mean(values: np.ndarray) -> float:
    return float("nan") if not len(values) or np.isnan(values).all() else float(np.nanmean(values))


def _ci(
    fn: Callable[..., float], *arrays: np.ndarray, groups: np.ndarray, n_boot: int
) -> dict[str, float | int | None] | None:
    if not len(groups):
        return None
    return as_dict(bootstrap_ci(fn, *arrays, n_boot=n_boot, seed=SEED, by_group=groups))


def segmentation(records: Sequence[Record], n_boot: int = N_BOOT) -> dict[str, Any] | None:
    masked = [r for r in records if r["truth"] == "mask"]
    if not masked:
        return None
    lesion = [r for r in masked if r["has_lesion"]]
    free = [r for r in records if r["has_lesion"] is False]
    groups = np.array([r["group"] for r in lesion])
    out: dict[str, Any] = {"n_lesion_images": len(lesion), "n_lesion_free_images": len(free)}
    for key in ("dice", "iou", "hd95_px", "hd95_mm"):
        values = np.array([np.nan if r.get(key) is None else r[key] for r in lesion], float)
        known = ~np.isnan(values)
        out[key] = _ci(_mean, values[known], groups=groups[known], n_boot=n_boot)
    # the Dice gap split in two: lesion images left unmarked (Dice 0), and outlines where marked
    unmarked = np.array([not r["marks"] for r in lesion], float)
    out["unmarked_lesion_rate"] = _ci(_mean, unmarked, groups=groups, n_boot=n_boot)
    marked = unmarked == 0
    dice = np.array([r["dice"] for r in lesion], float)
    out["dice_marked"] = _ci(_mean, dice[marked], groups=groups[marked], n_boot=n_boot)
    flags = np.array([r["false_lesion"] for r in free], float)
    out["false_lesion_rate"] = _ci(
        _mean, flags, groups=np.array([r["group"] for r in free]), n_boot=n_boot
    )
    out["hd95_note"] = "over lesion images on which the model marked a lesion (else undefined)"
    return out


class _Froc:
    """FROC points of a resample of images; the six points of one resample computed once."""

    def __init__(self, records: Sequence[Record]) -> None:
        self.scores = [
            np.array([m[4] for m in [*r["marks"], *r.get("candidates", [])]], float)
            for r in records
        ]
        self.hits = [np.array([*r["hits"], *r.get("candidate_hits", [])], bool) for r in records]
        self.found = np.array([sum(r["hits"]) for r in records], float)  # at the operating point
        self.false = np.array([len(r["hits"]) - sum(r["hits"]) for r in records], float)
        self.lesions = np.array([len(r["truth_boxes"]) for r in records])
        self._memo: dict[bytes, list[float]] = {}

    def points(self, rows: np.ndarray) -> list[float]:
        key = rows.tobytes()
        if key not in self._memo:
            scores = np.concatenate([self.scores[i] for i in rows] or [np.zeros(0)])
            hits = np.concatenate([self.hits[i] for i in rows] or [np.zeros(0, bool)])
            curve = froc_curve(scores, hits, len(rows), int(self.lesions[rows].sum()))
            points = froc_points(curve)
            self._memo[key] = [*points, _mean(np.array(points))]
        return self._memo[key]


def detection(records: Sequence[Record], n_boot: int = N_BOOT) -> dict[str, Any] | None:
    scored = [r for r in records if "hits" in r]
    if not scored or not any(r["truth_boxes"] for r in scored):
        return None
    froc = _Froc(scored)
    rows, groups = np.arange(len(scored)), np.array([r["group"] for r in scored])
    points = []
    for k, rate in enumerate((*FP_RATES, None)):
        value = _ci(lambda idx, k=k: froc.points(idx)[k], rows, groups=groups, n_boot=n_boot)
        points.append({"fp_per_image": rate, **(value or {})})
    curve = froc_curve(
        np.concatenate([froc.scores[i] for i in rows]),
        np.concatenate([froc.hits[i] for i in rows]),
        len(rows),
        int(froc.lesions.sum()),
    )
    operating_point = {
        "what": "the lesions the card's thresholds report (mask and presence), the point the "
        "service runs at",
        "sensitivity": _ci(
            lambda idx: float(froc.found[idx].sum() / max(froc.lesions[idx].sum(), 1)),
            rows,
            groups=groups,
            n_boot=n_boot,
        ),
        "fp_per_image": _ci(
            lambda idx: float(froc.false[idx].mean()), rows, groups=groups, n_boot=n_boot
        ),
    }
    return {
        "hit_rule": HIT_RULE,
        "mark_score": MARK_SCORE[
            "score" if all(r.get("mark_score") == "score" for r in scored) else "mean_probability"
        ],
        "n_images": len(scored),
        "n_lesions": int(froc.lesions.sum()),
        "froc": points[:-1],
        "mean_sensitivity": {k: v for k, v in points[-1].items() if k != "fp_per_image"},
        "operating_point": operating_point,
        "curve": {
            "fp_per_image": [round(float(v), 5) for v in curve.fp_per_image],
            "sensitivity": [round(float(v), 5) for v in curve.sensitivity],
        },
    }


def _classification(
    probs: np.ndarray, labels: np.ndarray, groups: np.ndarray | None, threshold: float, n_boot: int
) -> dict[str, Any]:
    summary = summarise_classification(
        probs, labels, threshold=threshold, n_boot=n_boot, seed=SEED, by_group=groups
    )
    out: dict[str, Any] = {"threshold": threshold, "n": len(labels)}
    out["class_counts"] = {
        "malignant": int(labels.sum()),
        "benign": int(len(labels) - labels.sum()),
    }
    out |= {key: as_dict(summary[key]) for key in CLASSIFICATION_KEYS}
    return out


def classification(
    records: Sequence[Record], threshold: float, n_boot: int = N_BOOT
) -> dict[str, Any] | None:
    scored = [r for r in records if r["label"] is not None and r["probability"] is not None]
    if not scored:
        return None
    probs = np.array([r["probability"] for r in scored], float)
    labels = np.array([r["label"] for r in scored], int)
    groups = np.array([r["group"] for r in scored])
    return _classification(probs, labels, groups, threshold, n_boot)


def per_patient(
    records: Sequence[Record], threshold: float, n_boot: int = N_BOOT
) -> dict[str, Any] | None:
    """Patient-level classification: the patient's probability is the mean of its patches';
    malignant where at least half its patches are (IDC: nearly every patient has some), and
    ``burden_mae``, the mean |mean probability - share of positive patches| over patients."""
    by_patient: dict[str, list[Record]] = {}
    for r in records:
        known = r["label"] is not None and r["probability"] is not None
        if known and r["group"].startswith("patient:"):
            by_patient.setdefault(r["group"], []).append(r)
    if len(by_patient) < 2:
        return None
    probs = np.array([np.mean([r["probability"] for r in rs]) for rs in by_patient.values()])
    shares = np.array([np.mean([r["label"] for r in rs]) for rs in by_patient.values()])
    labels = (shares >= 0.5).astype(int)
    out = _classification(probs, labels, None, threshold, n_boot)
    errors = np.abs(probs - shares)
    out["burden_mae"] = as_dict(bootstrap_ci(_mean, errors, n_boot=n_boot, seed=SEED))
    out["rule"] = (
        "a patient's probability is the mean of its patches'; the patient counts as malignant "
        "where at least half its patches are; burden_mae: mean |probability - positive share|"
    )
    return out
