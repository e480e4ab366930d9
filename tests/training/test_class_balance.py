"""Class balance in ``ce`` (``positive_weight``) and the decision threshold chosen on validation
for balanced accuracy (``training.calibration.decision_threshold``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.calibration import (
    ThresholdChoice,
    balanced_threshold,
    decision_threshold,
    fit_temperature,
    probabilities,
)
from training.config import config_from_dict
from training.losses import LossConfigError, build_loss
from training.metrics import MetricInputError, balanced_accuracy, sensitivity, specificity
from training.steps import build_criterion

# --- positive_weight ------------------------------------------------------------------------------


def test_positive_weight_is_class_weights_one_and_w() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.3, 0.1], [-0.5, 1.5], [0.0, 0.2]])
    labels = torch.tensor([0, 1, 1, 0])
    weighted = build_loss("ce", positive_weight=2.9)(logits, labels)
    expected = F.cross_entropy(logits, labels, weight=torch.tensor([1.0, 2.9]))
    torch.testing.assert_close(weighted, expected)
    assert not torch.isclose(weighted, F.cross_entropy(logits, labels))


def test_positive_weight_makes_a_missed_cancer_pull_harder_than_a_false_alarm() -> None:
    logits = torch.tensor([[2.0, -2.0], [-2.0, 2.0]], requires_grad=True)  # equally wrong
    build_loss("ce", positive_weight=3.0)(logits, torch.tensor([1, 0])).backward()
    assert logits.grad is not None
    missed, false_alarm = logits.grad.abs().sum(dim=1)  # row 0: a cancer called benign
    torch.testing.assert_close(missed, 3.0 * false_alarm)


def test_positive_weight_takes_mixup_soft_targets() -> None:
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    soft = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
    loss = build_loss("ce", positive_weight=2.0)(logits, soft)
    logp = F.log_softmax(logits, dim=1)
    expected = -(soft * logp * torch.tensor([1.0, 2.0])).sum(dim=1).mean()
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"positive_weight": -1.0}, "positive_weight must be >= 0"),
        ({"positive_weight": 2.0, "class_weights": [1.0, 2.0]}, "not both"),
    ],
)
def test_bad_positive_weights_state_the_rule(params: dict[str, object], message: str) -> None:
    with pytest.raises(LossConfigError, match=message):
        build_loss("ce", **params)


def test_positive_weight_reaches_the_criterion_from_a_yaml_style_config() -> None:
    config = config_from_dict(
        {
            "stage": "histopathology",
            "task": "classification",
            "data": {"dataset": "idc", "root": "."},
            "model": {"name": "resnet18", "in_channels": 3, "num_classes": 2, "input_size": 50},
            "loss": {"name": "ce", "params": {"positive_weight": 1.7}},
        }
    )
    criterion = build_criterion(config)
    outputs = {"class_logits": torch.tensor([[0.5, -0.5]])}
    value = criterion(outputs, {"label": torch.tensor([1])})
    torch.testing.assert_close(value, F.cross_entropy(outputs["class_logits"], torch.tensor([1])))
    batch = {"label": torch.tensor([1, 0])}
    two = {"class_logits": torch.tensor([[0.5, -0.5], [0.5, -0.5]])}
    expected = F.cross_entropy(two["class_logits"], batch["label"], weight=torch.tensor([1, 1.7]))
    torch.testing.assert_close(criterion(two, batch), expected)


# --- decision threshold ---------------------------------------------------------------------------


def _brute_force_best(probs: np.ndarray, labels: np.ndarray) -> float:
    return max(balanced_accuracy(probs, labels, t) for t in np.unique(probs))


def test_the_threshold_maximises_balanced_accuracy_on_imbalanced_cases() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(600) < 0.27).astype(np.int64)  # IDC-like: about 1 in 4 malignant
    probs = 1 / (1 + np.exp(-(rng.normal(0, 1, 600) + 1.5 * labels - 1.2)))  # (600,)
    choice = balanced_threshold(probs, labels)
    assert choice.balanced_accuracy == pytest.approx(_brute_force_best(probs, labels))
    assert balanced_accuracy(probs, labels, choice.threshold) == pytest.approx(
        choice.balanced_accuracy
    )
    assert sensitivity(probs, labels, choice.threshold) == pytest.approx(choice.sensitivity)
    assert specificity(probs, labels, choice.threshold) == pytest.approx(choice.specificity)
    assert choice.threshold < 0.5  # the rare class pulls the cut below 0.5
    assert choice.balanced_accuracy > balanced_accuracy(probs, labels, 0.5)
    assert choice.n == 600


def test_the_threshold_sits_between_cases_and_ties_favour_sensitivity() -> None:
    probs = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert balanced_threshold(probs, labels).threshold == pytest.approx(0.45)  # between .3, .6
    tied = balanced_threshold(np.array([0.2, 0.4, 0.6, 0.8]), np.array([0, 1, 0, 1]))
    assert tied.threshold == pytest.approx(0.3)  # BA 0.75 at 0.3 and 0.7: the lower one


def test_threshold_on_calibrated_binary_class_logits() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random(400) < 0.3).astype(np.int64)
    margin = 3.0 * (rng.normal(0, 1, 400) + 1.4 * labels - 0.8)  # over-confident
    logits = np.stack([np.zeros(400), margin], axis=1)  # (400, 2)
    temperature = fit_temperature(logits, labels)
    choice = decision_threshold(logits, labels, temperature)
    malignant = probabilities(logits, temperature)[:, 1]
    assert choice.temperature == pytest.approx(temperature)
    assert balanced_accuracy(malignant, labels, choice.threshold) == pytest.approx(
        choice.balanced_accuracy
    )
    assert set(choice.to_dict()) == {
        "threshold",
        "balanced_accuracy",
        "sensitivity",
        "specificity",
        "n",
        "temperature",
    }
    assert isinstance(choice, ThresholdChoice) and 0.0 < choice.threshold < 1.0


@pytest.mark.parametrize(
    ("probs", "labels", "message"),
    [
        ([0.2, 0.8], [1, 1], "both classes"),
        ([0.2, 0.8], [0, 2], "0/1 label"),
        ([0.2, 1.5], [0, 1], r"in \[0, 1\]"),
        ([0.2], [0, 1], "0/1 label"),
    ],
)
def test_threshold_inputs_that_break_a_rule_are_refused(
    probs: list[float], labels: list[int], message: str
) -> None:
    with pytest.raises(MetricInputError, match=message):
        balanced_threshold(probs, labels)


def test_a_multi_class_head_has_no_binary_threshold() -> None:
    with pytest.raises(MetricInputError, match="binary logits"):
        decision_threshold(np.zeros((4, 3)), np.array([0, 1, 2, 0]))
