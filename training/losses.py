"""Losses of the paper as pure functions with thin modules, by name: ``build_loss("tversky")``.

Segmentation losses take mask logits ``(B, 1, H, W)`` and a {0, 1} target of the same shape (or
``(B, H, W)``). Dice and Tversky are computed over the whole batch by default (one ratio of sums,
stable when a batch holds images without a lesion, e.g. BUSI 'normal'); ``per_image=True``
averages per-image losses instead. With y the target and p = sigmoid(logits) (the paper's
notation): TP = sum(y p), FP = sum((1 - y) p), FN = sum(y (1 - p)).

- ``bce``: binary cross-entropy with logits.
- ``dice``: 1 - (2 TP + s) / (2 TP + FP + FN + s), i.e. 1 - (2 sum(yp) + s) / (sum(y) + sum(p) + s).
- ``tversky`` (Salehi et al. 2017): 1 - (TP + s) / (TP + alpha FP + beta FN + s); alpha weighs
  false positives, beta false negatives; default alpha 0.3, beta 0.7 (favours recall). With
  alpha = beta = 0.5 it equals Dice with smooth 2 s (exactly Dice when s = 0).
- ``dice_bce``: dice_weight * Dice + bce_weight * BCE.
- ``ce``: cross-entropy for classification, optional class weights (``class_weights``, or the
  binary ``positive_weight``); targets are class indices ``(B,)`` or class probabilities
  ``(B, K)`` (MixUp / CutMix).

``JointLoss`` adds the malignancy head's BCE to a mask loss for the joint segmentation models.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from breastdx.errors import BreastdxError
from training.registry import Registry

UNKNOWN_LABEL = -1  # malignancy label of a sample without one; JointLoss ignores it

LOSSES: Registry[type[nn.Module]] = Registry("loss")


class LossConfigError(BreastdxError):
    """A loss was asked for with parameters it cannot have."""

    code = "loss_config_error"
    title = "Invalid loss configuration"


class LossInputError(BreastdxError):
    """Predictions and targets given to a loss do not fit together."""

    code = "loss_input_error"
    title = "Invalid loss input"


def _match_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.ndim == logits.ndim - 1 and logits.shape[1] == 1:
        target = target.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
    if target.shape != logits.shape:
        raise LossInputError(
            f"target shape {tuple(target.shape)} must equal logits shape {tuple(logits.shape)}"
        )
    return target.to(logits.dtype)


def soft_counts(
    logits: torch.Tensor, target: torch.Tensor, per_image: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft TP, FP, FN of sigmoid(logits) against a {0, 1} target: scalars, or ``(B,)``."""
    target = _match_target(logits, target)
    probs = torch.sigmoid(logits)  # (B, 1, H, W)
    dims = tuple(range(1, logits.ndim)) if per_image else tuple(range(logits.ndim))
    tp = (probs * target).sum(dims)
    fp = (probs * (1 - target)).sum(dims)
    fn = ((1 - probs) * target).sum(dims)
    return tp, fp, fn


def dice_index(
    tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, smooth: float = 1.0
) -> torch.Tensor:
    """(2 TP + s) / (2 TP + FP + FN + s)."""
    return (2 * tp + smooth) / (2 * tp + fp + fn + smooth).clamp_min(1e-7)


def tversky_index(
    tp: torch.Tensor,
    fp: torch.Tensor,
    fn: torch.Tensor,
    alpha: float = 0.3,
    beta: float = 0.7,
    smooth: float = 1.0,
) -> torch.Tensor:
    """(TP + s) / (TP + alpha FP + beta FN + s) (Salehi et al. 2017): alpha on FP, beta on FN."""
    return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth).clamp_min(1e-7)


def bce_loss(
    logits: torch.Tensor, target: torch.Tensor, pos_weight: float | None = None
) -> torch.Tensor:
    """Mean binary cross-entropy with logits; ``pos_weight`` scales the foreground term."""
    target = _match_target(logits, target)
    weight = None if pos_weight is None else logits.new_tensor(pos_weight)
    return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)


def dice_loss(
    logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0, per_image: bool = False
) -> torch.Tensor:
    """1 - soft Dice of sigmoid(logits) (see the module docstring)."""
    return (1 - dice_index(*soft_counts(logits, target, per_image), smooth)).mean()


def tversky_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.3,
    beta: float = 0.7,
    smooth: float = 1.0,
    per_image: bool = False,
) -> torch.Tensor:
    """1 - Tversky index of sigmoid(logits); alpha weighs FP, beta FN (Salehi et al. 2017)."""
    tp, fp, fn = soft_counts(logits, target, per_image)
    return (1 - tversky_index(tp, fp, fn, alpha, beta, smooth)).mean()


def _check_non_negative(**values: float | None) -> None:
    for name, value in values.items():
        if value is not None and value < 0:
            raise LossConfigError(f"loss parameter {name} must be >= 0, got {value}")


@LOSSES.register("bce")
class BCELoss(nn.Module):
    """Binary cross-entropy with logits on the mask."""

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        _check_non_negative(pos_weight=pos_weight)
        self.pos_weight = pos_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return bce_loss(logits, target, self.pos_weight)


@LOSSES.register("dice")
class DiceLoss(nn.Module):
    """1 - soft Dice; subclasses change ``score`` only (segmentation_models.pytorch style)."""

    def __init__(self, smooth: float = 1.0, per_image: bool = False) -> None:
        super().__init__()
        _check_non_negative(smooth=smooth)
        self.smooth = smooth
        self.per_image = per_image

    def score(self, tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
        return dice_index(tp, fp, fn, self.smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (1 - self.score(*soft_counts(logits, target, self.per_image))).mean()


@LOSSES.register("tversky")
class TverskyLoss(DiceLoss):
    """1 - Tversky index (Salehi et al. 2017); ``alpha`` weighs FP, ``beta`` weighs FN."""

    def __init__(
        self, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0, per_image: bool = False
    ) -> None:
        super().__init__(smooth, per_image)
        _check_non_negative(alpha=alpha, beta=beta)
        if alpha + beta <= 0:
            raise LossConfigError("tversky: alpha + beta must be > 0")
        self.alpha = alpha
        self.beta = beta

    def score(self, tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
        return tversky_index(tp, fp, fn, self.alpha, self.beta, self.smooth)


@LOSSES.register("dice_bce")
class DiceBCELoss(nn.Module):
    """``dice_weight`` * Dice loss + ``bce_weight`` * BCE."""

    def __init__(
        self,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        smooth: float = 1.0,
        per_image: bool = False,
    ) -> None:
        super().__init__()
        _check_non_negative(dice_weight=dice_weight, bce_weight=bce_weight)
        self.dice = DiceLoss(smooth, per_image)
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dice = self.dice(logits, target)
        return self.dice_weight * dice + self.bce_weight * bce_loss(logits, target)


@LOSSES.register("ce")
class CrossEntropyLoss(nn.Module):
    """Cross-entropy on ``(B, K)`` class logits, optionally class-weighted against imbalance.

    ``class_weights`` has one weight per class; ``positive_weight`` (binary, a scalar a YAML
    ``loss.params`` can hold) is shorthand for ``class_weights = (1, positive_weight)``, e.g. the
    ratio of negative to positive training samples, so each class weighs the same in total.
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        positive_weight: float | None = None,
    ) -> None:
        super().__init__()
        _check_non_negative(label_smoothing=label_smoothing, positive_weight=positive_weight)
        if positive_weight is not None:
            if class_weights is not None:
                raise LossConfigError("ce: give class_weights or positive_weight, not both")
            class_weights = (1.0, float(positive_weight))
        if class_weights is not None:
            _check_non_negative(**{f"class_weights[{i}]": w for i, w in enumerate(class_weights)})
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float)
        self.register_buffer("weight", weight)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.weight is not None and self.weight.numel() != logits.shape[1]:
            raise LossInputError(
                f"ce: {self.weight.numel()} class weights for {logits.shape[1]} classes"
            )
        return F.cross_entropy(
            logits, target, weight=self.weight, label_smoothing=self.label_smoothing
        )


def build_loss(name: str, **params: Any) -> nn.Module:
    """The registered loss ``name`` built with ``params``; unknown parameters are named."""
    loss_cls = LOSSES.get(name)
    accepted = [p for p in inspect.signature(loss_cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise LossConfigError(
            f"loss {name!r}: unknown parameter(s) {unknown}; accepted: {', '.join(accepted)}"
        )
    return loss_cls(**params)


class JointLoss(nn.Module):
    """Mask loss + ``cls_weight`` * BCE of the malignancy logit, for the joint models.

    Malignancy labels are 1 (malignant), 0 (not malignant) or ``UNKNOWN_LABEL`` (-1), which is
    left out of the BCE. The data layer decides for lesion-free images: BUSI 'normal' may be
    labelled 0 (nothing malignant) or -1 (excluded). A batch with no known label adds 0.
    """

    def __init__(self, seg_loss: nn.Module, cls_weight: float = 1.0) -> None:
        super().__init__()
        _check_non_negative(cls_weight=cls_weight)
        self.seg_loss = seg_loss
        self.cls_weight = cls_weight

    def components(
        self, outputs: Mapping[str, torch.Tensor], mask: torch.Tensor, malignancy: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "seg_loss", "cls_loss"}`` for a batch (the last two for logging)."""
        seg = self.seg_loss(outputs["mask_logits"], mask)
        logit = outputs["malignancy_logit"].reshape(-1)  # (B,)
        labels = malignancy.reshape(-1).to(logit.dtype)  # (B,)
        if labels.shape != logit.shape:
            raise LossInputError(f"{labels.numel()} malignancy labels for {logit.numel()} logits")
        known = labels != UNKNOWN_LABEL
        if bool(known.any()):
            cls = F.binary_cross_entropy_with_logits(logit[known], labels[known])
        else:
            cls = logit.sum() * 0.0  # keeps the graph; contributes nothing
        return {"loss": seg + self.cls_weight * cls, "seg_loss": seg, "cls_loss": cls}

    def forward(
        self, outputs: Mapping[str, torch.Tensor], mask: torch.Tensor, malignancy: torch.Tensor
    ) -> torch.Tensor:
        return self.components(outputs, mask, malignancy)["loss"]
