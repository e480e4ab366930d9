"""The paper's networks by name: ``build_model("unet", in_channels=1, ...)``.

Segmentation (``unet``, ``resunetpp``, ``deeplabv3``, ``deeplabv3_mobilenet``) returns
``{"mask_logits": (B, 1, H, W), "malignancy_logit": (B, 1)}``; classification (``vgg19``,
``resnet50``, ``densenet121``, ``efficientnet_v2_s``) returns ``{"class_logits": (B, K)}``.
Every model keeps its resolved ``ModelSpec`` as ``model.config`` for checkpoints.

Pretrained weights only ever come from a local file; nothing here downloads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from breastdx.errors import BreastdxError
from training.models import classifiers, deeplab, ensemble, resunetpp, unet
from training.models.heads import (
    CLASSIFICATION_OUTPUTS,
    MODELS,
    SEGMENTATION_OUTPUTS,
    BreastdxModel,
    MalignancyHead,
    ModelConfigError,
    ModelSpec,
    ModelTask,
    OnnxExportWrapper,
    adapt_kernel_channels,
)

__all__ = [
    "CLASSIFICATION_OUTPUTS",
    "MODELS",
    "SEGMENTATION_OUTPUTS",
    "BreastdxModel",
    "MalignancyHead",
    "ModelConfigError",
    "ModelSpec",
    "ModelTask",
    "OnnxExportWrapper",
    "PretrainedReport",
    "PretrainedWeightsError",
    "build_model",
    "build_model_from_config",
    "classifiers",
    "deeplab",
    "ensemble",
    "load_pretrained",
    "resunetpp",
    "unet",
]

logger = logging.getLogger(__name__)


class PretrainedWeightsError(BreastdxError):
    """A pretrained weights file is missing, unreadable or fits nothing in the model."""

    code = "pretrained_weights_error"
    title = "Pretrained weights could not be loaded"


@dataclass(frozen=True)
class PretrainedReport:
    """What ``load_pretrained`` did: key names per outcome."""

    prefix: str
    loaded: tuple[str, ...]
    adapted: tuple[str, ...]  # first convolution summed / tiled to the model's in_channels
    skipped: tuple[str, ...]  # in the file, shape fits no adaptation (e.g. a 1000-class layer)
    missing: tuple[str, ...]  # in the model, not set from the file
    unexpected: tuple[str, ...]  # in the file, no such key in the model


def build_model(
    name: str,
    *,
    in_channels: int = 1,
    num_classes: int | None = None,
    width: int | None = None,
    input_size: int = 256,
    pretrained: Path | None = None,
    **options: Any,
) -> BreastdxModel:
    """Build a registered model, optionally loading local pretrained weights.

    Args:
        name: A name in ``MODELS`` (an unknown name raises, listing the valid ones).
        in_channels: 1 (grey) or 3 (RGB); any count >= 1 works.
        num_classes: Classification classes (default 2); segmentation takes 1 or 2, both one
            foreground logit (recorded as 1).
        width: Base channel count for ``unet`` (default 64) and ``resunetpp`` (default 16);
            ignored by the torchvision-based models.
        input_size: The square training input size, recorded and checked against the model's
            down-sampling (e.g. a multiple of 16 for a depth-4 U-Net).
        pretrained: A local ``torch.save``-d state dict (see ``load_pretrained``).
        **options: Model-specific options, e.g. ``depth`` and ``head_dropout`` for ``unet``.
    """
    model_cls = MODELS.get(name)
    classes = model_cls.default_num_classes if num_classes is None else num_classes
    config = ModelSpec(name, in_channels, classes, width, input_size, options)
    model = model_cls(config)
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model


def build_model_from_config(config: ModelSpec | Mapping[str, Any]) -> BreastdxModel:
    """Rebuild a model from ``model.config`` or its ``to_dict()`` (weights not loaded)."""
    data = config.to_dict() if isinstance(config, ModelSpec) else dict(config)
    return build_model(data.pop("name"), **data)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(
            f"pretrained weights file {path} does not exist", path=str(path)
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise PretrainedWeightsError(
            f"pretrained weights file {path} is not a readable torch state dict ({exc})",
            path=str(path),
        ) from exc
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    elif isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]  # a trainer checkpoint (best.pt): its exported weights
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise PretrainedWeightsError(
            f"{path} must hold a state dict (name -> tensor), {{'state_dict': ...}} or a "
            "trainer checkpoint",
            path=str(path),
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def _best_prefix(model: BreastdxModel, keys: list[str], targets: Mapping[str, Any]) -> str:
    """The prefix (of ``model.pretrained_prefixes``) under which most file keys exist."""
    return max(model.pretrained_prefixes, key=lambda p: sum(p + k in targets for k in keys))


def load_pretrained(model: BreastdxModel, path: Path) -> PretrainedReport:
    """Load a local state dict into ``model`` non-strictly and log what did not fit.

    The file may be the model's own state dict or a torchvision one (e.g. ImageNet ResNet-50
    weights the user saved with ``torch.save(resnet50(weights=...).state_dict(), path)``): its
    keys are matched under the prefix that fits most. A first convolution with 3 input channels
    is summed over RGB for a grey model; tensors of any other shape mismatch (a 1000-class layer)
    are skipped. Raises ``PretrainedWeightsError`` for a missing or unreadable file or when no
    tensor fits at all.
    """
    state = _read_state_dict(path)
    targets = model.state_dict()
    prefix = _best_prefix(model, list(state), targets)
    usable: dict[str, torch.Tensor] = {}
    adapted: list[str] = []
    skipped: list[str] = []
    for key, value in state.items():
        target = targets.get(prefix + key)
        if target is None:
            continue
        if value.shape != target.shape:
            same_kernel = value.ndim == 4 and value.shape[0] == target.shape[0]
            if not (same_kernel and value.shape[2:] == target.shape[2:]):
                skipped.append(key)
                continue
            value = adapt_kernel_channels(value, int(target.shape[1]))
            adapted.append(key)
        usable[prefix + key] = value
    if not usable:
        raise PretrainedWeightsError(
            f"none of the {len(state)} tensors in {path} fit model {model.config.name!r}",
            path=str(path),
        )
    result = model.load_state_dict(usable, strict=False)
    unexpected = tuple(k for k in state if prefix + k not in targets)
    report = PretrainedReport(
        prefix,
        tuple(usable),
        tuple(adapted),
        tuple(skipped),
        tuple(result.missing_keys),
        unexpected,
    )
    _log_report(model.config.name, path, report)
    return report


def _log_report(name: str, path: Path, report: PretrainedReport) -> None:
    logger.info(
        "pretrained %s <- %s: %d loaded (%d adapted), %d skipped, %d missing, %d unexpected",
        name,
        path,
        len(report.loaded),
        len(report.adapted),
        len(report.skipped),
        len(report.missing),
        len(report.unexpected),
    )
    for label, keys in (
        ("skipped (shape)", report.skipped),
        ("missing", report.missing),
        ("unexpected", report.unexpected),
    ):
        if keys:
            logger.warning("pretrained %s: %s keys: %s", name, label, ", ".join(keys[:20]))
