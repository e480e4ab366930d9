"""Loss and evaluation steps of the trainer: the criterion per task, a no-grad pass, metrics.

Segmentation: ``training.losses.JointLoss`` (the configured mask loss on ``mask_logits`` plus
``loss.malignancy_weight`` x BCE of ``malignancy_logit``). Classification: the configured class
loss (``ce``), which takes integer labels or the soft targets of MixUp/CutMix. Metrics come from
``training.metrics`` (per-image foreground Dice and IoU, an empty prediction of an empty mask
scoring 1; the paper's foreground/background mean IoU; accuracy, balanced accuracy, ROC AUC).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from training import metrics
from training.config import Task, TrainConfig
from training.losses import JointLoss, build_loss
from training.models.heads import LESION_MALIGNANCY, PRESENCE

Batch = dict[str, torch.Tensor]
Outputs = dict[str, torch.Tensor]


class Criterion(Protocol):
    def __call__(self, outputs: Outputs, batch: Batch) -> torch.Tensor: ...


@dataclass(frozen=True)
class SegmentationCriterion:
    """``JointLoss``: mask loss + ``malignancy_weight`` x BCE of the malignancy head, plus
    ``lesion_weight`` x BCE of the per-pixel malignancy map inside the true lesions and
    ``presence_weight`` x BCE of the lesion-presence head (where the model has those outputs)."""

    joint: JointLoss
    lesion_weight: float = 0.0
    presence_weight: float = 0.0

    def __call__(self, outputs: Outputs, batch: Batch) -> torch.Tensor:
        logits = {k: v.float() for k, v in outputs.items()}  # losses in float32 under autocast
        loss = self.joint(logits, batch["mask"], batch["label"])
        if LESION_MALIGNANCY in logits and self.lesion_weight > 0:
            loss = loss + self.lesion_weight * lesion_malignancy_loss(
                logits[LESION_MALIGNANCY], batch["mask"], batch["label"]
            )
        if PRESENCE in logits and self.presence_weight > 0:
            loss = loss + self.presence_weight * presence_loss(logits[PRESENCE], batch["mask"])
        return loss


def has_lesion(mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` float: 1 where the true mask ``(B, 1, H, W)`` holds a lesion pixel."""
    return (mask.flatten(1) > 0.5).any(dim=1).float()


def presence_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE of the presence logits ``(B, 1)`` against whether each true mask holds a lesion."""
    return nn.functional.binary_cross_entropy_with_logits(logits.reshape(-1), has_lesion(mask))


def lesion_malignancy_loss(
    logits: torch.Tensor, mask: torch.Tensor, label: torch.Tensor
) -> torch.Tensor:
    """BCE of per-pixel malignancy logits ``(B, 1, H, W)`` against the image's label, averaged
    over the pixels of true lesions only (images without a lesion or label add nothing)."""
    inside = (mask > 0.5) & (label >= 0).view(-1, 1, 1, 1)  # (B, 1, H, W)
    if not bool(inside.any()):
        return logits.sum() * 0.0  # keeps the graph; no lesion pixel in the batch
    target = label.clamp(min=0).float().view(-1, 1, 1, 1).expand_as(logits)
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return bce[inside].mean()


@dataclass(frozen=True)
class ClassificationCriterion:
    """The class loss against ``batch["soft_label"]`` when mixed, else the integer labels."""

    loss: nn.Module

    def __call__(self, outputs: Outputs, batch: Batch) -> torch.Tensor:
        targets = batch.get("soft_label")
        logits = outputs["class_logits"].float()  # (B, K)
        return self.loss(logits, batch["label"] if targets is None else targets)


def build_criterion(config: TrainConfig) -> Criterion:
    """The criterion of ``config.task`` from ``training.losses`` with ``config.loss``."""
    loss = build_loss(config.loss.name, **config.loss.params)
    if config.task is Task.CLASSIFICATION:
        return ClassificationCriterion(loss)
    joint = JointLoss(loss, cls_weight=config.loss.malignancy_weight)
    return SegmentationCriterion(
        joint, config.loss.lesion_malignancy_weight, config.loss.presence_weight
    )


@dataclass
class EvalOutput:
    """A no-grad pass: mean loss, labels, logits and (segmentation) binary masks per image."""

    loss: float
    labels: np.ndarray  # (N,) int
    logits: np.ndarray  # (N, K) class logits, or (N,) malignancy logits
    pred_masks: list[np.ndarray] = field(default_factory=list)  # (H, W) bool each
    true_masks: list[np.ndarray] = field(default_factory=list)  # (H, W) bool each
    presence: list[float] = field(default_factory=list)  # presence logit per image, if output


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    criterion: Criterion,
    device: torch.device,
    amp: bool,
) -> EvalOutput:
    """Run ``model`` over ``batches`` in eval mode; masks thresholded at probability 0.5."""
    model.eval()
    total, count = 0.0, 0
    labels: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    out = EvalOutput(0.0, np.zeros(0, np.int64), np.zeros(0, np.float32))
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    for batch in batches:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            outputs = model(batch["image"])
            loss = criterion(outputs, batch)
        size = int(batch["image"].shape[0])
        total, count = total + float(loss) * size, count + size
        labels.append(batch["label"].cpu().numpy())
        if "class_logits" in outputs:
            logits.append(outputs["class_logits"].float().cpu().numpy())  # (B, K)
            continue
        logits.append(outputs["malignancy_logit"].float().reshape(-1).cpu().numpy())  # (B,)
        if PRESENCE in outputs:
            out.presence.extend(outputs[PRESENCE].float().reshape(-1).cpu().tolist())
        pred = (outputs["mask_logits"] > 0).squeeze(1).cpu().numpy()  # (B, H, W)
        out.pred_masks.extend(pred)
        out.true_masks.extend((batch["mask"] > 0.5).squeeze(1).cpu().numpy())
    out.loss = total / max(count, 1)
    out.labels = np.concatenate(labels) if labels else out.labels
    out.logits = np.concatenate(logits) if logits else out.logits
    return out


def summarise(task: Task, out: EvalOutput, temperature: float = 1.0) -> dict[str, float]:
    """Point estimates of the validation metrics (``training.metrics``), the stopping candidates.

    Segmentation: mean per-image ``dice``, ``iou``, ``miou_fg_bg``, the malignancy head's
    ``malignancy_auc`` and, for a model with a presence head, its ``presence_auc`` (images with
    a lesion against those without). Classification: ``accuracy``, ``balanced_accuracy``, ``auc``.
    """
    if task is Task.SEGMENTATION:
        pairs = list(zip(out.pred_masks, out.true_masks, strict=True))
        known = out.labels >= 0  # UNKNOWN_LABEL (-1) has no malignancy truth
        malignancy = sigmoid(out.logits[known] / temperature)
        summary = {
            "dice": _mean([metrics.dice_score(p, t) for p, t in pairs]),
            "iou": _mean([metrics.iou_score(p, t) for p, t in pairs]),
            "miou_fg_bg": _mean([metrics.miou_fg_bg(p, t) for p, t in pairs]),
            "malignancy_auc": _auc(malignancy, out.labels[known]),
        }
        if out.presence:
            lesion = np.asarray([t.any() for t in out.true_masks], np.int64)
            summary["presence_auc"] = _auc(np.asarray(out.presence), lesion)
        return summary
    probs = softmax(out.logits / temperature)[:, 1]  # (N,) P(malignant)
    return {
        "accuracy": metrics.accuracy(probs, out.labels),
        "balanced_accuracy": metrics.balanced_accuracy(probs, out.labels),
        "auc": _auc(probs, out.labels),
    }


def report(task: Task, out: EvalOutput, temperature: float = 1.0) -> dict[str, Any]:
    """Test metrics with bootstrap intervals (``training.metrics.summarise_*``), JSON-ready."""
    if task is Task.SEGMENTATION:
        summary = metrics.summarise_segmentation(out.pred_masks, out.true_masks)
        known = out.labels >= 0
        if len(np.unique(out.labels[known])) == 2:
            malignancy = sigmoid(out.logits[known] / temperature)
            cls = metrics.summarise_classification(malignancy, out.labels[known])
            summary |= {f"malignancy_{k}": v for k, v in cls.items()}
        return dict(jsonable(summary))
    probs = softmax(out.logits / temperature)  # (N, 2)
    return dict(jsonable(metrics.summarise_classification(probs, out.labels)))


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    if len(np.unique(labels)) < 2:
        return float("nan")  # undefined with one class
    return metrics.roc_auc(scores, labels)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function, without overflow for large logits."""
    return 0.5 * (1.0 + np.tanh(0.5 * logits))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(N, K)`` logits."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def jsonable(value: Any) -> Any:
    """Metric results (floats, dataclasses, pydantic models, MetricValue) as JSON-ready data."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
