"""A copy of a shipped model registered under a changed card (the runtime tests' fixtures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from models_registry.card import ModelCard
from models_registry.registry import PRODUCTION, Registry
from models_registry.store import SHIPPED_STORE

SHIPPED_ULTRASOUND = "ultrasound-unet"


def shipped_card(name: str = SHIPPED_ULTRASOUND) -> tuple[ModelCard, Path]:
    """The production card and ONNX file of a shipped model (skips while the store lacks it)."""
    registry = Registry([SHIPPED_STORE])
    if name not in registry.names():
        pytest.skip(f"the shipped store holds no {name} yet: build it with make models")
    loaded = registry.load(f"{name}@{PRODUCTION}")
    return loaded.card, loaded.onnx_path


def register_copy(store: Path, name: str = SHIPPED_ULTRASOUND, **changes: Any) -> Registry:
    """A registry at ``store`` holding the shipped ``name`` as version 1 (``production``), its
    card changed by ``changes`` (top-level card fields, e.g. ``parity`` or ``runtimes``). The
    copy allows the float32 runtimes only (no ``reduced_precision`` entry, whatever the shipped
    card lists) unless ``changes`` gives one."""
    card, onnx_path = shipped_card(name)
    body = card.model_dump(mode="json", exclude={"name", "version", "registered_at", "onnx"})
    draft = {**body, "onnx": {"opset": card.onnx.opset}, "reduced_precision": [], **changes}
    registry = Registry([store])
    registry.register(name, onnx_path, draft, alias=PRODUCTION)
    return registry


def zero_tolerance(card: ModelCard) -> dict[str, Any]:
    """``parity`` changes that leave no room at all: any difference fails the gate."""
    parity = card.parity.model_dump(mode="json")
    return {"parity": {**parity, "tolerance": 0.0, "min_mask_agreement": 1.0}}
