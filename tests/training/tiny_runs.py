"""Tiny trained runs, exported and registered once per test session (shared by export and
inference tests): one epoch on synthetic data at 32-64 px, a few thousand parameters each.

``tiny_cnn`` is a test-only classifier registered in ``training.models.MODELS``: the paper's
classifiers (ResNet50, ...) are too large for a fast test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from models_registry.registry import Registry
from models_registry.store import DirectoryStore
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import config_from_dict
from training.data.synthetic import make_busi, make_idc, make_mias
from training.export import ExportResult, export_checkpoint, split_images
from training.models import MODELS, BreastdxModel, ModelSpec, ModelTask
from training.trainer import train

NAMES = {"ultrasound": "us-tiny", "mammography": "mg-tiny", "histopathology": "idc-tiny"}
_CACHE: dict[str, Any] = {}


class TinyCNN(BreastdxModel):
    """Two strided convolutions, global pooling, a linear layer: ``class_logits`` (B, K)."""

    task = ModelTask.CLASSIFICATION
    default_num_classes = 2
    option_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: ModelSpec) -> None:
        super().__init__(config)
        c = self.config.in_channels
        self.features = nn.Sequential(
            nn.Conv2d(c, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(8, self.config.num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"class_logits": self.head(self.features(x))}  # (B, K)


if "tiny_cnn" not in MODELS.names():
    MODELS.register("tiny_cnn")(TinyCNN)


def _config(stage: str, root: Path, out: Path) -> dict[str, Any]:
    common = {"device": "cpu", "progress": False, "output_dir": str(out), "seed": 0}
    optim = {"epochs": 1, "batch_size": 8, "scheduler": "none"}
    unet = {"name": "unet", "width": 4, "in_channels": 1, "options": {"depth": 2}}
    if stage == "ultrasound":
        return common | {
            "stage": stage,
            "task": "segmentation",
            "optim": optim,
            "data": {"dataset": "busi", "root": str(root)},
            "model": unet | {"input_size": 32},
            "loss": {"malignancy_weight": 0.2},
        }
    if stage == "mammography":
        return common | {
            "stage": stage,
            "task": "segmentation",
            "optim": optim,
            "data": {"dataset": "mias", "root": str(root)},
            "model": unet | {"input_size": 64},
            "preprocess": {
                "resize_mode": "letterbox",
                "crop_breast": True,
                "canonical_orientation": True,
            },
        }
    return common | {
        "stage": stage,
        "task": "classification",
        "optim": optim | {"batch_size": 16},
        "data": {"dataset": "idc", "root": str(root)},
        "model": {"name": "tiny_cnn", "in_channels": 3, "input_size": 32},
        "preprocess": {"normalisation": "imagenet"},
    }


def _data(stage: str, folder: Path) -> Path:
    if stage == "ultrasound":
        return make_busi(folder, n=12, seed=0)
    if stage == "mammography":
        return make_mias(folder, n=24, seed=0, size=128)
    return make_idc(folder, n=64, seed=0, patients=8)


def trained(stage: str, factory: pytest.TempPathFactory) -> Path:
    """``best.pt`` of a one-epoch run of ``stage`` (trained once per session)."""
    key = f"run:{stage}"
    if key not in _CACHE:
        folder = factory.mktemp(f"run-{stage}")
        config = config_from_dict(_config(stage, _data(stage, folder / "data"), folder / "run"))
        result = train(config)
        state = load_checkpoint(result.best_checkpoint)
        if not state.get("git_commit"):  # tests outside a git checkout: the card needs one
            save_checkpoint(result.best_checkpoint, state | {"git_commit": "0" * 40})
        _CACHE[key] = result.best_checkpoint
    path: Path = _CACHE[key]
    return path


def exported(stage: str, factory: pytest.TempPathFactory, *, fp16: bool = False) -> ExportResult:
    """The run of ``stage`` exported with parity on its test split (once per session)."""
    key = f"export:{stage}:{fp16}"
    if key not in _CACHE:
        checkpoint = trained(stage, factory)
        out = factory.mktemp(f"export-{stage}") / "model.onnx"
        images = split_images(checkpoint.parent, "test", 8)
        _CACHE[key] = export_checkpoint(checkpoint, out, parity_images=images, fp16=fp16)
    result: ExportResult = _CACHE[key]
    return result


def registry(factory: pytest.TempPathFactory) -> Registry:
    """A store with every stage's tiny model (``production`` alias), built once per session."""
    if "store" not in _CACHE:
        store = factory.mktemp("store")
        reg = Registry([DirectoryStore(store)])
        for stage, name in NAMES.items():
            result = exported(stage, factory, fp16=stage == "ultrasound")
            reg.register(
                name,
                result.onnx_path,
                result.draft,
                fp16_path=result.fp16_path,
                alias="production",
            )
        _CACHE["store"] = store
    return Registry([DirectoryStore(_CACHE["store"])])
