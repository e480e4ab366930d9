"""The paper's histopathology classifiers, from torchvision's builders with ``weights=None``.

VGG19 (Simonyan & Zisserman 2015), ResNet50 (He et al. 2016), DenseNet121 (Huang et al. 2017)
and EfficientNetV2-S (Tan & Le 2021), each adapted to ``in_channels`` (the first convolution is
replaced) and ``num_classes`` (torchvision's own classifier layer). The architectures are the
paper's, with torchvision's fixed widths, so ``width`` is ignored (recorded as None); for small
machines lower ``input_size`` instead (down to 32 px, e.g. the 50x50 BHI patches resized to 64):
every model ends in adaptive average pooling, so VGG19's 7x7 classifier input is kept by
torchvision's ``AdaptiveAvgPool2d((7, 7))`` whatever the input size.

Nothing is downloaded; a local ImageNet state dict saved from torchvision loads with
``build_model(..., pretrained=path)`` (its 1000-class layer is skipped with a log line).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn
from torchvision import models as tvm

from training.models.heads import (
    MODELS,
    BreastdxModel,
    ModelConfigError,
    ModelSpec,
    ModelTask,
    replace_first_conv,
)


class TorchvisionClassifier(BreastdxModel):
    """A torchvision classification network returning ``{"class_logits": (B, num_classes)}``."""

    task = ModelTask.CLASSIFICATION
    default_num_classes = 2
    pretrained_prefixes = ("", "net.")
    builder: ClassVar[Callable[..., nn.Module]]

    def __init__(self, config: ModelSpec) -> None:
        super().__init__(config)
        builder = type(self).builder
        self.net = builder(weights=None, num_classes=self.config.num_classes)
        replace_first_conv(self.net, self.config.in_channels)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"class_logits": self.net(x)}  # (B, num_classes)


@MODELS.register("vgg19")
class VGG19(TorchvisionClassifier):
    """VGG19; option ``classifier_width`` (default 4096, the paper's) narrows the two hidden
    fully connected layers for smoke runs, where their 120M parameters dominate the cost."""

    builder = staticmethod(tvm.vgg19)
    option_defaults: ClassVar[dict[str, Any]] = {"classifier_width": 4096}

    def __init__(self, config: ModelSpec) -> None:
        super().__init__(config)
        hidden = int(self.config.options["classifier_width"])
        if hidden < 1:
            raise ValueError(f"vgg19: classifier_width must be at least 1, got {hidden}")
        if hidden != 4096:
            features = self.net.classifier[0].in_features  # 512 * 7 * 7
            self.net.classifier = nn.Sequential(
                nn.Linear(features, hidden),
                nn.ReLU(True),
                nn.Dropout(),
                nn.Linear(hidden, hidden),
                nn.ReLU(True),
                nn.Dropout(),
                nn.Linear(hidden, self.config.num_classes),
            )


RESNET_STEMS = ("imagenet", "small")


class TorchvisionResNet(TorchvisionClassifier):
    """A torchvision ResNet; option ``stem``: ``imagenet`` (default, the paper's: a stride-2 7x7
    convolution then a stride-2 max-pool, /4 before the first block) or ``small`` (the max-pool
    dropped, /2): for inputs as small as IDC's 50 px patches, where the ImageNet stem leaves a
    13 px map for the first block and a 2 px map for the last. ``small`` costs about 4x the
    compute of the same network; a ResNet18 with it costs about what a ResNet50 costs without.
    """

    option_defaults: ClassVar[dict[str, Any]] = {"stem": "imagenet"}

    @classmethod
    def check_options(cls, name: str, options: Mapping[str, Any]) -> None:
        super().check_options(name, options)
        if options["stem"] not in RESNET_STEMS:
            raise ModelConfigError(
                f"{name}: stem must be one of {', '.join(RESNET_STEMS)}, got {options['stem']!r}"
            )

    def __init__(self, config: ModelSpec) -> None:
        super().__init__(config)
        if self.config.options["stem"] == "small":
            self.net.maxpool = nn.Identity()


@MODELS.register("resnet18")
class ResNet18(TorchvisionResNet):
    """ResNet18: a narrower, shallower ResNet (11.2 M parameters) to compare with ResNet50."""

    builder = staticmethod(tvm.resnet18)


@MODELS.register("resnet34")
class ResNet34(TorchvisionResNet):
    builder = staticmethod(tvm.resnet34)


@MODELS.register("resnet50")
class ResNet50(TorchvisionResNet):
    builder = staticmethod(tvm.resnet50)


@MODELS.register("densenet121")
class DenseNet121(TorchvisionClassifier):
    builder = staticmethod(tvm.densenet121)


@MODELS.register("efficientnet_v2_s")
class EfficientNetV2S(TorchvisionClassifier):
    builder = staticmethod(tvm.efficientnet_v2_s)
