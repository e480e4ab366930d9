"""Losses against hand-computed values, their registry and the joint mask + malignancy loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.losses import (
    LOSSES,
    DiceLoss,
    JointLoss,
    LossConfigError,
    LossInputError,
    TverskyLoss,
    build_loss,
    dice_loss,
    tversky_loss,
)
from training.registry import UnknownNameError


def _target() -> torch.Tensor:
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :2] = 1.0  # 4 foreground pixels of 16
    return target


def test_registry_names() -> None:
    assert set(LOSSES.names()) == {"bce", "ce", "dice", "dice_bce", "tversky"}
    with pytest.raises(UnknownNameError, match="valid loss names: bce, ce, dice, dice_bce"):
        build_loss("focal")


@pytest.mark.parametrize("name", ["bce", "dice", "tversky", "dice_bce"])
def test_perfect_prediction_costs_nearly_nothing(name: str) -> None:
    target = _target()
    logits = (target * 2 - 1) * 30.0  # sigmoid ~ exactly the target
    assert build_loss(name)(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_dice_by_hand() -> None:
    # p = 0.5 everywhere: TP = 2, FP = 6, FN = 2 -> (2*2 + 1) / (4 + 6 + 2 + 1) = 5 / 13
    logits = torch.zeros(1, 1, 4, 4)
    assert build_loss("dice")(logits, _target()).item() == pytest.approx(1 - 5 / 13)
    assert build_loss("dice", smooth=0.0)(logits, _target()).item() == pytest.approx(1 - 4 / 12)


def test_tversky_by_hand_alpha_weighs_false_positives() -> None:
    # TP = 2, FP = 6, FN = 2: (2 + 1) / (2 + 0.3 * 6 + 0.7 * 2 + 1) = 3 / 6.2
    logits = torch.zeros(1, 1, 4, 4)
    assert build_loss("tversky")(logits, _target()).item() == pytest.approx(1 - 3 / 6.2)
    loss = build_loss("tversky", alpha=1.0, beta=0.0, smooth=0.0)(logits, _target())
    assert loss.item() == pytest.approx(1 - 2 / (2 + 6))  # only FP counted


def test_default_tversky_punishes_misses_more_than_false_alarms() -> None:
    target = _target()
    miss = target.clone()
    miss[..., 0, 0] = 0.0  # one foreground pixel missed (FN)
    false_alarm = target.clone()
    false_alarm[..., 3, 3] = 1.0  # one background pixel marked (FP)
    loss = TverskyLoss(smooth=0.0)
    assert loss((miss * 2 - 1) * 30, target) > loss((false_alarm * 2 - 1) * 30, target)


@pytest.mark.parametrize("per_image", [False, True])
def test_tversky_with_equal_weights_equals_dice(per_image: bool) -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 8, 8)
    target = (torch.rand(3, 1, 8, 8) > 0.6).float()
    half = tversky_loss(logits, target, alpha=0.5, beta=0.5, smooth=0.0, per_image=per_image)
    assert half.item() == pytest.approx(dice_loss(logits, target, 0.0, per_image).item())
    smoothed = tversky_loss(logits, target, alpha=0.5, beta=0.5, smooth=1.0, per_image=per_image)
    assert smoothed.item() == pytest.approx(dice_loss(logits, target, 2.0, per_image).item())


def test_tversky_overrides_only_the_score_of_dice() -> None:
    assert issubclass(TverskyLoss, DiceLoss)
    assert TverskyLoss.forward is DiceLoss.forward


def test_per_image_averages_image_losses() -> None:
    logits = torch.zeros(2, 1, 4, 4)
    target = torch.cat([_target(), torch.zeros(1, 1, 4, 4)])
    empty = 1 - 1 / (8 + 1)  # image 2: TP = 0, FP = 8, FN = 0
    expected = 0.5 * ((1 - 5 / 13) + empty)
    assert dice_loss(logits, target, per_image=True).item() == pytest.approx(expected)


def test_dice_bce_is_the_weighted_sum() -> None:
    torch.manual_seed(1)
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    expected = 0.25 * dice_loss(logits, target) + 2.0 * bce
    loss = build_loss("dice_bce", dice_weight=0.25, bce_weight=2.0)(logits, target)
    assert loss.item() == pytest.approx(expected.item())


def test_target_without_channel_axis_is_accepted_and_wrong_shapes_are_named() -> None:
    logits = torch.zeros(1, 1, 4, 4)
    assert build_loss("dice")(logits, _target()[:, 0]).item() == pytest.approx(1 - 5 / 13)
    with pytest.raises(LossInputError, match="must equal logits shape"):
        build_loss("dice")(logits, torch.zeros(1, 1, 8, 8))


def test_cross_entropy_with_class_weights_and_soft_targets() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    log_p = torch.log_softmax(logits, dim=1)
    w = torch.tensor([1.0, 3.0])
    expected = -(w[labels] * log_p[torch.arange(3), labels]).sum() / w[labels].sum()
    loss = build_loss("ce", class_weights=[1.0, 3.0])(logits, labels)
    assert loss.item() == pytest.approx(expected.item())
    soft = F.one_hot(labels, 2).float()
    assert build_loss("ce")(logits, soft).item() == pytest.approx(build_loss("ce")(logits, labels))


def test_bad_parameters_state_the_rule() -> None:
    with pytest.raises(LossConfigError, match="unknown parameter"):
        build_loss("tversky", gamma=2.0)
    with pytest.raises(LossConfigError, match="alpha must be >= 0"):
        build_loss("tversky", alpha=-0.1)
    with pytest.raises(LossInputError, match="2 class weights for 3 classes"):
        build_loss("ce", class_weights=[1.0, 2.0])(torch.zeros(2, 3), torch.tensor([0, 2]))


def _outputs(malignancy: list[float]) -> dict[str, torch.Tensor]:
    logits = torch.tensor(malignancy).reshape(-1, 1).requires_grad_()
    return {"mask_logits": torch.zeros(len(malignancy), 1, 4, 4), "malignancy_logit": logits}


def test_joint_loss_ignores_unknown_malignancy_labels() -> None:
    outputs = _outputs([2.0, -1.0, 0.5])
    mask = _target().repeat(3, 1, 1, 1)
    labels = torch.tensor([1, 0, -1])
    parts = JointLoss(DiceLoss(), cls_weight=0.5).components(outputs, mask, labels)
    bce = F.binary_cross_entropy_with_logits(torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0]))
    dice = dice_loss(outputs["mask_logits"], mask)
    assert parts["cls_loss"].item() == pytest.approx(bce.item())
    assert parts["loss"].item() == pytest.approx(dice.item() + 0.5 * bce.item())


def test_joint_loss_without_known_labels_adds_nothing_and_backpropagates() -> None:
    outputs = _outputs([3.0, -3.0])
    loss = JointLoss(build_loss("bce"))(outputs, torch.zeros(2, 1, 4, 4), torch.tensor([-1, -1]))
    loss.backward()
    assert outputs["malignancy_logit"].grad is not None
    assert torch.count_nonzero(outputs["malignancy_logit"].grad) == 0
