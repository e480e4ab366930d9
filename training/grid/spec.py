"""Which runs make up the grid (the cells of the paper's Tables 4-8) and at which scale.

A scale sets image size, widths, epochs and data subset so the grid fits the machine at hand:
``smoke`` (seconds per run, synthetic data in the test suite), ``cpu`` (a 2-core machine; real
data, reduced sizes) and ``full`` (the paper's sizes, for a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from training.grid.paper import CLS_MODELS, CLS_POLICIES, SEG_LOSSES, SEG_MODELS, SEG_POLICIES


class Modality(StrEnum):
    MAMMOGRAPHY = "mammography"
    ULTRASOUND = "ultrasound"
    HISTOPATHOLOGY = "histopathology"


class Scale(StrEnum):
    SMOKE = "smoke"
    CPU = "cpu"
    FULL = "full"


@dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    modality: Modality
    model: str  # the paper's name: unet, resunetpp, deeplabv3, vgg19, ...
    loss: str  # bce, dice, tversky; ce for classification
    policy: str  # vanilla, geometric, filter, all; mixup, cutmix for classification
    protocol: str  # leakage_safe or paper

    @property
    def id(self) -> str:
        return f"{self.model}-{self.loss}-{self.policy}"


@dataclass(frozen=True)
class ScalePreset:
    """Sizes of one scale for one modality."""

    input_size: int
    epochs: int
    batch_size: int
    patience: int
    lr: float = 1e-3
    widths: dict[str, int] = field(default_factory=dict)  # by model; absent: model default
    substitutes: dict[str, str] = field(default_factory=dict)  # paper model -> network built
    max_samples: int | None = None  # seeded subset of whole patients/groups
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # by model: build options
    paper_copies: int = 5


# DeepLabV3 on the MobileNetV3 backbone at smoke scale too: its ResNet-50 (39M parameters)
# makes every smoke cell write ~1 GB of checkpoints; tests/training/test_models.py runs the
# ResNet-50 variant forward (shapes) and loads weights into it.
_SEG_SMOKE = ScalePreset(
    32,
    1,
    4,
    1,
    widths={"unet": 4, "resunetpp": 4},
    substitutes={"deeplabv3": "deeplabv3_mobilenet"},
)
PRESETS: dict[Scale, dict[Modality, ScalePreset]] = {
    Scale.SMOKE: {
        Modality.ULTRASOUND: _SEG_SMOKE,
        Modality.MAMMOGRAPHY: _SEG_SMOKE,
        Modality.HISTOPATHOLOGY: ScalePreset(
            32, 1, 8, 1, paper_copies=2, options={"vgg19": {"classifier_width": 64}}
        ),
    },
    Scale.CPU: {
        Modality.ULTRASOUND: ScalePreset(
            64,
            5,
            16,
            3,
            widths={"unet": 16, "resunetpp": 8},
            substitutes={"deeplabv3": "deeplabv3_mobilenet"},
        ),
        Modality.MAMMOGRAPHY: ScalePreset(
            128,
            12,
            8,
            5,
            widths={"unet": 16, "resunetpp": 8},
            substitutes={"deeplabv3": "deeplabv3_mobilenet"},
        ),
        Modality.HISTOPATHOLOGY: ScalePreset(48, 2, 16, 2, max_samples=800),
    },
    Scale.FULL: {
        Modality.ULTRASOUND: ScalePreset(256, 60, 8, 10, widths={"unet": 64, "resunetpp": 16}),
        Modality.MAMMOGRAPHY: ScalePreset(512, 60, 4, 10, widths={"unet": 64, "resunetpp": 16}),
        Modality.HISTOPATHOLOGY: ScalePreset(64, 30, 128, 5),
    },
}

DATASETS = {
    Modality.ULTRASOUND: ("busi", "busi"),
    Modality.MAMMOGRAPHY: ("mias", "mammography/mini-mias"),
    Modality.HISTOPATHOLOGY: ("idc", "idc"),
}  # modality -> (DataConfig.dataset, folder below the data root)


def segmentation_cells(modality: Modality, protocol: str) -> list[Cell]:
    """Table 4/6 (every loss, original data) and Table 5/7 (Dice and Tversky by policy)."""
    keys = {(m, loss, "vanilla") for m in SEG_MODELS for loss in SEG_LOSSES}
    keys |= {(m, loss, p) for m in SEG_MODELS for loss in ("dice", "tversky") for p in SEG_POLICIES}
    order = {name: i for i, name in enumerate(SEG_MODELS + SEG_LOSSES + SEG_POLICIES)}
    ordered = sorted(keys, key=lambda k: (order[k[2]], order[k[0]], order[k[1]]))
    return [Cell(modality, m, loss, p, protocol) for m, loss, p in ordered]


def classification_cells(protocol: str) -> list[Cell]:
    """Table 8: every classifier under every policy."""
    return [
        Cell(Modality.HISTOPATHOLOGY, m, "ce", p, protocol)
        for p in CLS_POLICIES
        for m in CLS_MODELS
    ]


def build_cells(
    modality: Modality,
    protocols: list[str],
    *,
    models: list[str] | None = None,
    losses: list[str] | None = None,
    policies: list[str] | None = None,
) -> list[Cell]:
    """The grid of one modality, optionally narrowed to some models, losses or policies."""
    cells = [
        cell
        for protocol in protocols
        for cell in (
            classification_cells(protocol)
            if modality is Modality.HISTOPATHOLOGY
            else segmentation_cells(modality, protocol)
        )
    ]
    return [
        c
        for c in cells
        if (not models or c.model in models)
        and (not losses or c.loss in losses)
        and (not policies or c.policy in policies)
    ]
