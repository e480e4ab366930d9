"""MixUp and CutMix: batch-level augmentation for classification, with soft labels.

MixUp (Zhang et al., ICLR 2018) blends two images, ``x = lam * x_i + (1 - lam) * x_j`` with
``lam ~ Beta(alpha, alpha)``. CutMix (Yun et al., ICCV 2019) pastes a box of ``x_j`` into
``x_i``; the box is clipped to the image and ``lam`` is re-computed from its real area. Targets
are mixed with the same ``lam``, so every soft-label row sums to 1; ``training.losses``' ``ce``
takes such soft targets. The paper used both for the histopathology stage (Table 8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from training.registry import Registry

MIXERS: Registry = Registry("batch mix")


@dataclass(frozen=True)
class MixResult:
    """A mixed batch: inputs ``(B, C, H, W)``, soft targets ``(B, K)``, the lam and box used."""

    inputs: torch.Tensor
    targets: torch.Tensor
    lam: float
    box: tuple[int, int, int, int] | None = None  # (y0, y1, x0, x1), CutMix only


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer labels ``(B,)`` or soft labels ``(B, K)`` as float soft labels ``(B, K)``."""
    if labels.ndim == 2:
        return labels.float()
    return F.one_hot(labels.long(), num_classes).float()


def _check_alpha(alpha: float) -> None:
    if not alpha > 0:
        raise ValueError(f"mix alpha must be > 0, got {alpha}")


@MIXERS.register("mixup")
def mixup(
    inputs: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    alpha: float,
    rng: np.random.Generator,
) -> MixResult:
    """MixUp of a batch with a permutation of itself."""
    _check_alpha(alpha)
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(inputs.shape[0])).to(inputs.device)
    targets = one_hot(labels, num_classes)
    mixed = lam * inputs + (1.0 - lam) * inputs[perm]  # (B, C, H, W)
    return MixResult(mixed, lam * targets + (1.0 - lam) * targets[perm], lam)


def cutmix_box(
    height: int, width: int, lam: float, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """A box of area about ``(1 - lam) * H * W`` centred uniformly, clipped to the image."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = round(height * cut), round(width * cut)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, width)
    return y0, y1, x0, x1


@MIXERS.register("cutmix")
def cutmix(
    inputs: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    alpha: float,
    rng: np.random.Generator,
) -> MixResult:
    """CutMix of a batch with a permutation of itself; lam adjusted to the clipped box area."""
    _check_alpha(alpha)
    height, width = inputs.shape[-2:]
    y0, y1, x0, x1 = cutmix_box(height, width, float(rng.beta(alpha, alpha)), rng)
    lam = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)
    perm = torch.from_numpy(rng.permutation(inputs.shape[0])).to(inputs.device)
    mixed = inputs.clone()
    mixed[..., y0:y1, x0:x1] = inputs[perm][..., y0:y1, x0:x1]
    targets = one_hot(labels, num_classes)
    return MixResult(mixed, lam * targets + (1.0 - lam) * targets[perm], lam, (y0, y1, x0, x1))


class BatchMixer:
    """Applies MixUp or CutMix to a batch with probability ``prob``.

    When both alphas are > 0 one of the two is drawn per batch with equal odds (as timm does).
    Unmixed batches get one-hot targets, so the loss always sees soft targets ``(B, K)``.

    Args:
        num_classes: K.
        mixup_alpha: Beta parameter of MixUp; 0 disables it.
        cutmix_alpha: Beta parameter of CutMix; 0 disables it.
        prob: chance that a batch is mixed.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
    ) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"mix probability must be in [0, 1], got {prob}")
        self.num_classes = num_classes
        self.choices = [
            (n, a) for n, a in (("mixup", mixup_alpha), ("cutmix", cutmix_alpha)) if a > 0
        ]
        self.prob = prob

    @property
    def enabled(self) -> bool:
        """True when at least one of MixUp and CutMix can fire."""
        return bool(self.choices) and self.prob > 0

    def __call__(
        self, inputs: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator
    ) -> MixResult:
        """Mix (or not) one batch; ``rng`` makes the choice, lam, permutation and box."""
        if not self.enabled or rng.random() >= self.prob:
            return MixResult(inputs, one_hot(labels, self.num_classes), 1.0)
        name, alpha = self.choices[int(rng.integers(0, len(self.choices)))]
        return MIXERS.get(name)(inputs, labels, self.num_classes, alpha, rng)
