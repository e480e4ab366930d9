"""Checkpoints: ``last.pt`` (to resume) and ``best.pt`` (to export), each with the resolved config.

A checkpoint holds the model and optimiser states, the epoch, the monitored metric, the early-
stopping state, the resolved configuration and the git commit of the code that trained it. The
configuration is also written as ``config.yaml`` beside the checkpoints.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

LAST = "last.pt"
BEST = "best.pt"
CONFIG = "config.yaml"


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs without the monitored metric improving (higher is better)."""

    patience: int
    best: float = float("-inf")
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's metric; True when it is a new best."""
        if value > self.best:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])


def git_commit(cwd: Path | None = None) -> str | None:
    """The commit of the checked-out code (``-dirty`` when modified), or None outside git."""
    where = cwd or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write atomically (temporary file, then rename) so a crash never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` (tensors and plain data only)."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=True)
    return state
