"""ResUNet++ (Jha et al. 2019, "ResUNet++: An Advanced Architecture for Medical Image
Segmentation") with a joint malignancy head on the ASPP bridge.

Layout as in the authors' reference code: a residual stem and three strided residual blocks, each
followed by squeeze-and-excitation; an ASPP bridge (dilations 6, 12, 18); three decoder steps of
attention -> nearest up-sampling -> concatenation with the skip -> residual block; a final ASPP and
a 1x1 convolution. ``width`` is the stem's channel count (default 16: filters 16-32-64-128 and a
256-channel bridge, as ``n_filters`` in the authors' ``m_resunet.py``); inputs must be multiples
of 8 in height and width.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from training.models.heads import MODELS, BreastdxModel, MalignancyHead, ModelSpec, ModelTask


def _bn_relu_conv(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
    ]


class SqueezeExcite(nn.Module):
    """Channel re-weighting by squeeze-and-excitation (Hu et al. 2018), reduction 8."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)  # (B, C, H, W) * (B, C, 1, 1)


class ResidualBlock(nn.Module):
    """Pre-activation residual block with a 1x1 projection shortcut, then squeeze-excitation.

    The stem variant starts with a plain convolution (no BN-ReLU on the raw input).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, stem: bool = False):
        super().__init__()
        first = (
            [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)]
            if stem
            else _bn_relu_conv(in_channels, out_channels, stride)
        )
        self.body = nn.Sequential(*first, *_bn_relu_conv(out_channels, out_channels))
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride), nn.BatchNorm2d(out_channels)
        )
        self.se = SqueezeExcite(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(self.body(x) + self.shortcut(x))  # (B, C_out, H / stride, W / stride)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling as in ResUNet++: summed dilated 3x3 branches, then 1x1."""

    def __init__(self, in_channels: int, out_channels: int, rates: tuple[int, ...] = (6, 12, 18)):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 3, padding=rate, dilation=rate),
                nn.BatchNorm2d(out_channels),
            )
            for rate in (*rates, 1)
        )
        self.project = nn.Conv2d(out_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(sum(branch(x) for branch in self.branches))  # (B, C_out, H, W)


class Attention(nn.Module):
    """Attention of the decoder: the finer skip ``g`` gates the coarser decoder features ``x``."""

    def __init__(self, skip_channels: int, channels: int) -> None:
        super().__init__()
        self.skip = nn.Sequential(*_bn_relu_conv(skip_channels, channels), nn.MaxPool2d(2))
        self.decoder = nn.Sequential(*_bn_relu_conv(channels, channels))
        self.gate = nn.Sequential(*_bn_relu_conv(channels, channels))

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        gated = self.gate(self.skip(g) + self.decoder(x))  # (B, C, h, w), g is (B, C_g, 2h, 2w)
        return gated * x  # (B, C, h, w)


class DecoderStep(nn.Module):
    """Attention -> 2x nearest up-sampling -> concatenation with the skip -> residual block."""

    def __init__(self, skip_channels: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.attention = Attention(skip_channels, in_channels)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.block = ResidualBlock(in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(self.attention(skip, x))  # (B, C_in, 2h, 2w)
        return self.block(torch.cat([x, skip], dim=1))  # (B, C_out, 2h, 2w)


@MODELS.register("resunetpp")
class ResUNetPlusPlus(BreastdxModel):
    """ResUNet++; option ``head_dropout`` for the malignancy head."""

    task = ModelTask.SEGMENTATION
    default_width = 16
    default_num_classes = 1
    option_defaults: ClassVar[Mapping[str, Any]] = {"head_dropout": 0.2}

    @classmethod
    def size_multiple(cls, options: Mapping[str, Any]) -> int:
        return 8

    def __init__(self, config: ModelSpec) -> None:
        super().__init__(config)
        w = int(self.config.width or 0)
        f = [w, 2 * w, 4 * w, 8 * w, 16 * w]
        self.stem = ResidualBlock(self.config.in_channels, f[0], stem=True)
        self.encoder = nn.ModuleList(ResidualBlock(f[i], f[i + 1], stride=2) for i in range(3))
        self.bridge = ASPP(f[3], f[4])
        self.decoder = nn.ModuleList(
            [
                DecoderStep(f[2], f[4], f[3]),
                DecoderStep(f[1], f[3], f[2]),
                DecoderStep(f[0], f[2], f[1]),
            ]
        )
        self.out_aspp = ASPP(f[1], f[0])
        self.mask_head = nn.Conv2d(f[0], 1, 1)
        self.malignancy_head = MalignancyHead(f[4], self.config.options["head_dropout"])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        skips = [self.stem(x)]  # (B, w, H, W)
        for block in self.encoder:
            skips.append(block(skips[-1]))  # (B, 2**(i+1) w, H / 2**(i+1), W / 2**(i+1))
        bridge = self.bridge(skips.pop())  # (B, 16 w, H / 8, W / 8)
        x = bridge
        for step in self.decoder:
            x = step(x, skips.pop())
        return {
            "mask_logits": self.mask_head(self.out_aspp(x)),  # (B, 1, H, W)
            "malignancy_logit": self.malignancy_head(bridge),  # (B, 1)
        }
