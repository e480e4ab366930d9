"""What every model shares: its config record, the registry, the output contract and the heads.

Output contract (also the ONNX output names, in this order):

- segmentation models return ``{"mask_logits": (B, 1, H, W), "malignancy_logit": (B, 1)}``; the
  mask is one foreground class (the paper: benign and malignant lesions never share an image) and
  the malignancy logit comes from ``MalignancyHead`` on the encoder's deepest features;
  a segmenter may add ``"lesion_malignancy_logits": (B, 1, H, W)`` (``LESION_MALIGNANCY``) and
  ``"presence_logit": (B, 1)`` (``PRESENCE``, ``PresenceHead``: whether the image holds a lesion);
- classification models return ``{"class_logits": (B, num_classes)}``.

``OnnxExportWrapper`` turns the dict into a tuple in ``model.output_names`` order for export.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any, ClassVar

import torch
from torch import nn

from breastdx.errors import BreastdxError
from training.registry import Registry

logger = logging.getLogger(__name__)

SEGMENTATION_OUTPUTS: tuple[str, ...] = ("mask_logits", "malignancy_logit")
# Optional third segmentation output: per-pixel malignancy logits (B, 1, H, W), trained inside
# true lesions only; a lesion's own malignancy probability is its mean over the lesion's pixels.
LESION_MALIGNANCY = "lesion_malignancy_logits"
# Optional segmentation output: a per-image lesion-presence logit (B, 1), trained against "the
# mask holds a lesion"; the service's image-level gate (``Thresholds.image_presence``).
PRESENCE = "presence_logit"
CLASSIFICATION_OUTPUTS: tuple[str, ...] = ("class_logits",)


class ModelTask(StrEnum):
    SEGMENTATION = "segmentation"
    CLASSIFICATION = "classification"


class ModelConfigError(BreastdxError):
    """A model was asked for with a configuration it cannot have."""

    code = "model_config_error"
    title = "Invalid model configuration"


@dataclass(frozen=True)
class ModelSpec:
    """The resolved arguments a model was built with; saved with checkpoints to rebuild it."""

    name: str
    in_channels: int
    num_classes: int
    width: int | None
    input_size: int
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready data; ``build_model(**config.to_dict())`` rebuilds the model."""
        data = asdict(self)
        data.update(data.pop("options"))
        return data


class BreastdxModel(nn.Module):
    """Base class of registered models: validates and records its ``ModelSpec``.

    Subclasses set the class variables and build their layers from ``self.config``.
    """

    task: ClassVar[ModelTask]
    default_width: ClassVar[int | None] = None  # None: the architecture has no width knob
    default_num_classes: ClassVar[int] = 2
    min_input_size: ClassVar[int] = 32
    option_defaults: ClassVar[Mapping[str, Any]] = {}
    pretrained_prefixes: ClassVar[tuple[str, ...]] = ("",)  # where foreign state dicts may fit

    def __init__(self, config: ModelSpec) -> None:
        super().__init__()
        self.config = self.resolve_config(config)

    @property
    def output_names(self) -> tuple[str, ...]:
        if self.task is ModelTask.SEGMENTATION:
            return SEGMENTATION_OUTPUTS
        return CLASSIFICATION_OUTPUTS

    @classmethod
    def size_multiple(cls, options: Mapping[str, Any]) -> int:
        """Input height and width must be multiples of this."""
        return 1

    @classmethod
    def check_options(cls, name: str, options: Mapping[str, Any]) -> None:
        """Raise ``ModelConfigError`` if an option breaks its rule (subclasses add their own)."""
        dropout = options.get("head_dropout", 0.0)
        if not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
            raise ModelConfigError(f"{name}: head_dropout must be in [0, 1), got {dropout!r}")

    @classmethod
    def resolve_config(cls, config: ModelSpec) -> ModelSpec:
        """Fill defaults and check every rule; raises ``ModelConfigError`` naming the rule."""
        unknown = sorted(set(config.options) - set(cls.option_defaults))
        if unknown:
            valid = ", ".join(sorted(cls.option_defaults)) or "none"
            raise ModelConfigError(
                f"{config.name}: unknown option(s) {unknown}; valid options: {valid}"
            )
        options = {**cls.option_defaults, **config.options}
        cls.check_options(config.name, options)
        if config.in_channels < 1:
            raise ModelConfigError(f"{config.name}: in_channels must be >= 1")
        width = cls._resolve_width(config)
        num_classes = cls._resolve_num_classes(config)
        multiple = max(cls.size_multiple(options), 1)
        if config.input_size < cls.min_input_size or config.input_size % multiple:
            raise ModelConfigError(
                f"{config.name}: input_size must be >= {cls.min_input_size} and a multiple of "
                f"{multiple}, got {config.input_size}"
            )
        return replace(config, width=width, num_classes=num_classes, options=options)

    @classmethod
    def _resolve_width(cls, config: ModelSpec) -> int | None:
        if cls.default_width is None:
            if config.width is not None:
                logger.info("%s has fixed widths; width=%s ignored", config.name, config.width)
            return None
        width = cls.default_width if config.width is None else config.width
        if width < 1:
            raise ModelConfigError(f"{config.name}: width must be >= 1, got {width}")
        return width

    @classmethod
    def _resolve_num_classes(cls, config: ModelSpec) -> int:
        if cls.task is ModelTask.SEGMENTATION:
            # One foreground class; 2 (foreground vs background) means the same single logit.
            if config.num_classes not in (1, 2):
                raise ModelConfigError(
                    f"{config.name}: segmentation has one foreground class; num_classes must be "
                    f"1 or 2 (both give one mask logit), got {config.num_classes}"
                )
            return 1
        if config.num_classes < 2:
            raise ModelConfigError(f"{config.name}: num_classes must be >= 2 for classification")
        return config.num_classes


MODELS: Registry[type[BreastdxModel]] = Registry("model")


class MalignancyHead(nn.Module):
    """Benign-vs-malignant logit from a feature map: global average pool, dropout, linear."""

    def __init__(self, in_channels: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.pool(features).flatten(1)  # (B, C)
        return self.linear(self.dropout(x))  # (B, 1)


class PresenceHead(nn.Module):
    """Lesion-presence logit of an image: a linear layer on the encoder's pooled deepest features
    and two summaries of the mask, its peak logit and its mean probability.

    The mask summaries are detached: the presence loss trains this head, never the mask. The
    mask's peak is what a gate without this head thresholds; here it is one input among the
    pooled features, so the head learns when a confident region is not a lesion.
    """

    def __init__(self, in_channels: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_channels + 2, 1)

    def forward(self, features: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        pooled = self.dropout(self.pool(features).flatten(1))  # (B, C)
        mask = mask_logits.detach().float().flatten(1)  # (B, H * W)
        peak = mask.amax(dim=1, keepdim=True)  # (B, 1)
        mean = torch.sigmoid(mask).mean(dim=1, keepdim=True)  # (B, 1)
        summary = torch.cat([peak, mean], dim=1).to(pooled.dtype)  # (B, 2)
        return self.linear(torch.cat([pooled, summary], dim=1))  # (B, 1)


class OnnxExportWrapper(nn.Module):
    """Returns the model's outputs as a tuple in ``model.output_names`` order (for ONNX export)."""

    def __init__(self, model: BreastdxModel) -> None:
        super().__init__()
        self.model = model
        self.output_names = model.output_names

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(x)
        return tuple(outputs[name] for name in self.output_names)


def adapt_kernel_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A conv kernel ``(O, I, kH, kW)`` for ``in_channels`` inputs.

    RGB -> grey sums the three kernels (a grey image seen as R = G = B gives the same response);
    other counts tile the kernels and rescale by ``I / in_channels`` (timm's rule).
    """
    source = weight.shape[1]
    if source == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)  # (O, 1, kH, kW)
    repeats = -(-in_channels // source)
    tiled = weight.repeat(1, repeats, 1, 1)[:, :in_channels]  # (O, in_channels, kH, kW)
    return tiled * (source / in_channels)


def replace_first_conv(module: nn.Module, in_channels: int) -> None:
    """Swap the first ``nn.Conv2d`` of ``module`` for a copy taking ``in_channels`` inputs."""
    name, conv = next((n, m) for n, m in module.named_modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels == in_channels:
        return
    if conv.groups != 1:
        raise ModelConfigError(f"cannot adapt a grouped first convolution ({name})")
    new = copy.deepcopy(conv)  # same kernel, stride, padding, dilation, bias
    new.in_channels = in_channels
    new.weight = nn.Parameter(adapt_kernel_channels(conv.weight.detach(), in_channels))
    parent_name, _, child = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, child, new)
