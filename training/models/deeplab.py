"""DeepLabV3 (Chen et al. 2017, "Rethinking Atrous Convolution for Semantic Image Segmentation")
from torchvision's builders, with a joint malignancy head on the backbone's output features.

``deeplabv3`` is the paper's model: a dilated ResNet-50 backbone (output stride 8) and torchvision's
ASPP head. ``deeplabv3_mobilenet`` swaps in MobileNetV3-Large (output stride 16) for small
machines. Both are built with ``weights=None, weights_backbone=None``: nothing is downloaded;
pretrained weights come from a local file (``build_model(..., pretrained=path)``), where either a
whole torchvision DeepLabV3 state dict or a plain ResNet-50 ImageNet state dict fits.

The widths are torchvision's: ``width`` scales nothing here and is ignored (recorded as None).
For grey input the backbone's first convolution is replaced by one with ``in_channels`` inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torchvision.models.segmentation import (
    DeepLabV3,
    deeplabv3_mobilenet_v3_large,
    deeplabv3_resnet50,
)

from training.models.heads import (
    MODELS,
    BreastdxModel,
    MalignancyHead,
    ModelSpec,
    ModelTask,
    replace_first_conv,
)


class _DeepLabV3(BreastdxModel):
    """torchvision DeepLabV3 (no auxiliary head) returning a mask and a malignancy logit."""

    task = ModelTask.SEGMENTATION
    default_num_classes = 1
    option_defaults: ClassVar[Mapping[str, Any]] = {"head_dropout": 0.2}
    pretrained_prefixes = ("", "net.", "net.backbone.")
    builder: ClassVar[Callable[..., DeepLabV3]]
    feature_channels: ClassVar[int]
    net: DeepLabV3

    @classmethod
    def size_multiple(cls, options: Mapping[str, Any]) -> int:
        return 16

    def __init__(self, config: ModelSpec) -> None:
        super().__init__(config)
        builder = type(self).builder
        self.net = builder(weights=None, weights_backbone=None, num_classes=1, aux_loss=False)
        replace_first_conv(self.net.backbone, self.config.in_channels)
        self.malignancy_head = MalignancyHead(
            self.feature_channels, self.config.options["head_dropout"]
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.net.backbone(x)["out"]  # (B, C_feat, H / stride, W / stride)
        mask = self.net.classifier(features)  # (B, 1, H / stride, W / stride)
        mask = F.interpolate(mask, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {
            "mask_logits": mask,  # (B, 1, H, W)
            "malignancy_logit": self.malignancy_head(features),  # (B, 1)
        }


@MODELS.register("deeplabv3")
class DeepLabV3ResNet50(_DeepLabV3):
    """DeepLabV3 with a dilated ResNet-50 backbone, as in the paper."""

    builder = staticmethod(deeplabv3_resnet50)
    feature_channels = 2048


@MODELS.register("deeplabv3_mobilenet")
class DeepLabV3MobileNet(_DeepLabV3):
    """DeepLabV3 with a MobileNetV3-Large backbone: a lighter option, not the paper's model."""

    builder = staticmethod(deeplabv3_mobilenet_v3_large)
    feature_channels = 960
