"""Metrics and temperature scaling against hand-computed values and brute-force references."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training import calibration, metrics
from training.metrics import MetricInputError, MetricValue

REPO_ROOT = Path(__file__).resolve().parents[2]


def _square(top: int, left: int, size: int = 4) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + 2, left : left + 2] = True
    return mask


def test_metrics_and_calibration_import_without_torch() -> None:
    code = "import sys, training.metrics, training.calibration; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_segmentation_scores_by_hand() -> None:
    pred, truth = _square(0, 0), _square(0, 1)  # TP 2, FP 2, FN 2, TN 10
    assert metrics.mask_counts(pred, truth) == (2, 2, 2, 10)
    assert metrics.dice_score(pred, truth) == pytest.approx(4 / 8)
    assert metrics.iou_score(pred, truth) == pytest.approx(2 / 6)
    assert metrics.miou_fg_bg(pred, truth) == pytest.approx((2 / 6 + 10 / 14) / 2)
    assert metrics.pixel_accuracy(pred, truth) == pytest.approx(12 / 16)
    assert metrics.dice_score(pred.astype(np.uint8) * 255, truth.astype(float)) == 0.5


def test_empty_mask_rules() -> None:
    empty, lesion = np.zeros((4, 4), bool), _square(1, 1)
    for score in (metrics.dice_score, metrics.iou_score):
        assert score(empty, empty) == 1.0  # both empty: perfect by default
        assert math.isnan(score(empty, empty, both_empty=float("nan")))
        assert score(lesion, empty) == 0.0  # a false alarm on a lesion-free image
        assert score(empty, lesion) == 0.0  # a missed lesion
    assert metrics.miou_fg_bg(empty, empty) == 1.0
    assert metrics.miou_fg_bg(lesion, empty) == pytest.approx((0 + 12 / 16) / 2)


def test_mask_rules_are_enforced() -> None:
    with pytest.raises(MetricInputError, match="threshold probabilities first"):
        metrics.dice_score(np.full((4, 4), 0.3), _square(0, 0))
    with pytest.raises(MetricInputError, match="must equal truth shape"):
        metrics.dice_score(np.zeros((4, 4)), np.zeros((4, 5)))


def test_pooled_miou_sums_counts_before_dividing() -> None:
    counts = [(2, 2, 2, 10), (0, 0, 0, 16)]
    assert metrics.pooled_miou_fg_bg(counts) == pytest.approx((2 / 6 + 26 / 30) / 2)


def test_binary_classification_metrics_by_hand() -> None:
    probs = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1])
    labels = np.array([1, 1, 1, 0, 0, 0])  # TP 2, FN 1, FP 1, TN 2
    assert metrics.confusion(probs, labels) == {"tp": 2, "fp": 1, "fn": 1, "tn": 2}
    assert metrics.accuracy(probs, labels) == pytest.approx(4 / 6)
    assert metrics.sensitivity(probs, labels) == pytest.approx(2 / 3)
    assert metrics.specificity(probs, labels) == pytest.approx(2 / 3)
    assert metrics.precision(probs, labels) == pytest.approx(2 / 3)
    assert metrics.f1_score(probs, labels) == pytest.approx(2 / 3)
    assert metrics.balanced_accuracy(probs, labels, threshold=0.7) == pytest.approx((2 / 3 + 1) / 2)
    assert metrics.brier_score(probs, labels) == pytest.approx(
        np.mean([0.01, 0.04, 0.49, 0.36, 0.04, 0.01])
    )
    two_column = np.stack([1 - probs, probs], axis=1)
    assert metrics.accuracy(two_column, labels) == pytest.approx(4 / 6)
    assert math.isnan(metrics.sensitivity(probs, np.zeros(6, int)))  # no positives: undefined


def _auc_by_pairs(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def test_roc_auc_handles_ties() -> None:
    assert metrics.roc_auc([0.1, 0.4, 0.4, 0.8], [0, 0, 1, 1]) == pytest.approx(3.5 / 4)
    assert metrics.roc_auc([0.5] * 4, [0, 1, 0, 1]) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=200) / 4.0  # many ties
    labels = rng.integers(0, 2, size=200)
    assert metrics.roc_auc(scores, labels) == pytest.approx(_auc_by_pairs(scores, labels))
    assert math.isnan(metrics.roc_auc([0.2, 0.3], [1, 1]))


def test_expected_calibration_error_on_known_cases() -> None:
    # all confidences 0.8 (one bin), 6 of 10 right: |0.6 - 0.8| = 0.2
    assert metrics.expected_calibration_error(np.full(10, 0.8), [1] * 6 + [0] * 4) == (
        pytest.approx(0.2)
    )
    # P(malignant) 0.1 -> confidence 0.9 in "benign"; two bins of 5 samples each
    probs = np.array([0.1] * 5 + [0.7] * 5)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])  # 0.8 right at 0.9, 1.0 right at 0.7
    expected = 0.5 * abs(0.8 - 0.9) + 0.5 * abs(1.0 - 0.7)
    assert metrics.expected_calibration_error(probs, labels, n_bins=15) == pytest.approx(expected)
    multi = np.array([[0.7, 0.2, 0.1], [0.1, 0.7, 0.2]])
    assert metrics.expected_calibration_error(multi, [0, 2]) == pytest.approx(0.2)


def test_bootstrap_interval_is_deterministic_and_holds_the_estimate() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(0.7, 0.1, size=60)
    first = metrics.bootstrap_ci(np.mean, values, n_boot=300, seed=7)
    again = metrics.bootstrap_ci(np.mean, values, n_boot=300, seed=7)
    other = metrics.bootstrap_ci(np.mean, values, n_boot=300, seed=8)
    assert isinstance(first, MetricValue) and first == again and first != other
    assert first.ci_low < first.value < first.ci_high and first.n == 60
    assert first.value == pytest.approx(values.mean())


def test_bootstrap_by_group_resamples_whole_groups() -> None:
    values = np.array([0.0, 0.0, 1.0, 1.0])
    one_patient = metrics.bootstrap_ci(np.mean, values, n_boot=50, by_group=[7, 7, 7, 7])
    assert one_patient.ci_low == one_patient.ci_high == 0.5  # every resample is the whole set
    two = metrics.bootstrap_ci(np.mean, values, n_boot=200, by_group=["a", "a", "b", "b"])
    assert {two.ci_low, two.ci_high} <= {0.0, 0.5, 1.0}  # only whole patients move
    with pytest.raises(MetricInputError, match="one id per row"):
        metrics.bootstrap_ci(np.mean, values, by_group=[1, 2])


def test_summaries() -> None:
    preds = [_square(0, 0), _square(0, 1), np.zeros((4, 4), bool)]
    truths = [_square(0, 0), _square(0, 0), np.zeros((4, 4), bool)]
    seg = metrics.summarise_segmentation(preds, truths, n_boot=100)
    assert set(seg) == {"dice", "iou", "miou_fg_bg", "miou_fg_bg_pooled", "pixel_accuracy"}
    assert seg["dice"].value == pytest.approx((1 + 0.5 + 1) / 3) and seg["dice"].n == 3
    probs, labels = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1]), np.array([1, 1, 1, 0, 0, 0])
    cls = metrics.summarise_classification(probs, labels, n_boot=100, seed=3)
    assert set(cls) == {
        "accuracy",
        "balanced_accuracy",
        "sensitivity",
        "specificity",
        "precision",
        "f1",
        "auc",
        "ece",
        "brier",
    }
    assert cls["auc"].value == pytest.approx(_auc_by_pairs(probs, labels))
    assert all(v.ci_low <= v.value <= v.ci_high for v in cls.values())


def _overconfident(classes: int, scale: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from calibrated probabilities; logits are those logits times ``scale``."""
    rng = np.random.default_rng(0)
    if classes == 2:
        p = rng.uniform(0.02, 0.98, size=4000)
        labels = (rng.uniform(size=p.size) < p).astype(int)
        return scale * np.log(p / (1 - p)), labels
    logits = rng.normal(0.0, 1.5, size=(4000, classes))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = (rng.uniform(size=(4000, 1)) > probs.cumsum(axis=1)).sum(axis=1)
    return scale * logits, labels


@pytest.mark.parametrize("classes", [2, 4])
def test_temperature_scaling_repairs_overconfidence(classes: int) -> None:
    logits, labels = _overconfident(classes)
    temperature = calibration.fit_temperature(logits, labels)
    assert temperature == pytest.approx(4.0, rel=0.15)
    report = calibration.calibration_report(logits, labels, temperature)
    assert report["nll_after"] < report["nll_before"]
    assert report["ece_after"] < 0.5 * report["ece_before"]
    before = calibration.probabilities(logits)
    after = calibration.probabilities(logits, temperature)
    if classes == 2:
        assert metrics.roc_auc(after, labels) == pytest.approx(metrics.roc_auc(before, labels))
    else:
        assert np.array_equal(before.argmax(axis=1), after.argmax(axis=1))


def test_temperature_below_one_for_underconfident_logits_and_unknown_labels_ignored() -> None:
    logits, labels = _overconfident(2, scale=0.5)
    temperature = calibration.fit_temperature(logits, labels)
    assert temperature == pytest.approx(0.5, rel=0.15)
    with_unknown = calibration.fit_temperature(
        np.append(logits, [50.0, -50.0]), np.append(labels, [-1, -1])
    )
    assert with_unknown == pytest.approx(temperature, rel=1e-6)
    assert calibration.nll(logits[:, None], labels) == pytest.approx(
        calibration.nll(logits, labels)
    )


def test_temperature_rules() -> None:
    with pytest.raises(MetricInputError, match="temperature must be > 0"):
        calibration.apply_temperature(np.zeros(3), 0.0)
    with pytest.raises(MetricInputError, match=r"class indices in 0\.\.2"):
        calibration.fit_temperature(np.zeros((2, 3)), [0, 3])
