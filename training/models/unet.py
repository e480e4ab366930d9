"""U-Net (Ronneberger et al. 2015, "U-Net: Convolutional Networks for Biomedical Image
Segmentation") with a joint malignancy head on the bottleneck.

Differences from the 2015 paper, as in common re-implementations: 3x3 convolutions are padded
("same"), so the mask has the input's size and no cropping is needed, and each convolution is
followed by batch normalisation. ``width`` is the first level's channel count (64 in the paper);
each of the ``depth`` (default 4) levels below doubles it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from training.models.heads import (
    LESION_MALIGNANCY,
    MODELS,
    PRESENCE,
    SEGMENTATION_OUTPUTS,
    BreastdxModel,
    MalignancyHead,
    ModelConfigError,
    ModelSpec,
    ModelTask,
    PresenceHead,
)


class DoubleConv(nn.Sequential):
    """(conv 3x3 -> batch norm -> ReLU) twice."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Up-convolution 2x2 (halves the channels), concatenation with the skip, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # (B, C_out, 2H, 2W)
        return self.conv(torch.cat([skip, x], dim=1))  # (B, C_out, 2H, 2W)


@MODELS.register("unet")
class UNet(BreastdxModel):
    """Classic U-Net; options ``depth`` (number of down-samplings) and ``head_dropout``.

    Input height and width must be multiples of ``2**depth``.
    """

    task = ModelTask.SEGMENTATION
    default_width = 64
    default_num_classes = 1
    option_defaults: ClassVar[Mapping[str, Any]] = {
        "depth": 4,
        "head_dropout": 0.2,
        "lesion_malignancy": False,  # a per-pixel malignancy map: each lesion's own probability
        "presence": False,  # a per-image lesion-presence logit (PresenceHead)
    }

    @classmethod
    def check_options(cls, name: str, options: Mapping[str, Any]) -> None:
        super().check_options(name, options)
        depth = options["depth"]
        if not isinstance(depth, int) or not 1 <= depth <= 6:
            raise ModelConfigError(f"{name}: depth must be an integer in 1..6, got {depth!r}")

    @classmethod
    def size_multiple(cls, options: Mapping[str, Any]) -> int:
        return 2 ** int(options["depth"])

    def __init__(self, config: ModelSpec) -> None:
        super().__init__(config)
        width, depth = int(self.config.width or 0), int(self.config.options["depth"])
        channels = [width * 2**level for level in range(depth + 1)]
        self.stem = DoubleConv(self.config.in_channels, channels[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(channels[i], channels[i + 1]))
            for i in range(depth)
        )
        self.up = nn.ModuleList(Up(channels[i + 1], channels[i]) for i in reversed(range(depth)))
        self.mask_head = nn.Conv2d(channels[0], 1, 1)
        self.malignancy_head = MalignancyHead(channels[-1], self.config.options["head_dropout"])
        self.lesion_malignancy_head = (
            nn.Conv2d(channels[0], 1, 1) if self.config.options["lesion_malignancy"] else None
        )
        dropout = self.config.options["head_dropout"]
        self.presence_head = (
            PresenceHead(channels[-1], dropout) if self.config.options["presence"] else None
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)  # (B, w, H, W)
        skips = [x]
        for down in self.down:
            x = down(x)  # (B, w * 2**(i+1), H / 2**(i+1), W / 2**(i+1))
            skips.append(x)
        bottleneck = skips.pop()  # (B, w * 2**depth, H / 2**depth, W / 2**depth)
        x = bottleneck
        for up in self.up:
            x = up(x, skips.pop())
        mask_logits = self.mask_head(x)  # (B, 1, H, W)
        outputs = {
            "mask_logits": mask_logits,
            "malignancy_logit": self.malignancy_head(bottleneck),  # (B, 1)
        }
        if self.lesion_malignancy_head is not None:
            outputs[LESION_MALIGNANCY] = self.lesion_malignancy_head(x)  # (B, 1, H, W)
        if self.presence_head is not None:
            outputs[PRESENCE] = self.presence_head(bottleneck, mask_logits)  # (B, 1)
        return outputs

    @property
    def output_names(self) -> tuple[str, ...]:
        extra = (LESION_MALIGNANCY,) if self.lesion_malignancy_head is not None else ()
        if self.presence_head is not None:
            extra = (*extra, PRESENCE)
        return (*SEGMENTATION_OUTPUTS, *extra)
