"""Run (or resume) the cells of the grid: one ``training.trainer.train`` call per cell.

Layout: ``<out>/<modality>/<protocol>/<cell id>/`` holds the run (checkpoints, logs, curves,
``metrics.json``) and ``cell.json`` (the cell, its wall time and status). A cell whose
``cell.json`` says ``done`` is skipped, so a grid interrupted at any point resumes where it
stopped; a half-trained cell resumes from its ``last.pt``. The cells of one protocol share one
split file, so every network is measured on the same test images.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from breastdx.errors import BreastdxError
from training.config import config_from_dict
from training.grid.spec import DATASETS, PRESETS, Cell, Modality, Scale, ScalePreset

logger = logging.getLogger(__name__)
CELL_FILE = "cell.json"
MIX = {
    "mixup": {"mixup_alpha": 0.2, "mix_prob": 1.0},
    "cutmix": {"cutmix_alpha": 1.0, "mix_prob": 1.0},
}


def _augment(cell: Cell) -> dict[str, Any]:
    if cell.policy in MIX:  # batch-level mixing on top of the original images
        return {"policy": "vanilla", **MIX[cell.policy]}
    if cell.modality is Modality.HISTOPATHOLOGY and cell.policy == "geometric":
        return {"policy": "geometric_histopathology"}  # the paper's stage-3 geometric set
    return {"policy": cell.policy}


def _makes_copies(cell: Cell) -> bool:
    return cell.protocol == "paper" and _augment(cell)["policy"] != "vanilla"


def cell_config(
    cell: Cell, scale: Scale, data_root: Path, out: Path, *, seed: int = 0, device: str = "auto"
) -> dict[str, Any]:
    """The training configuration (as a dict for ``config_from_dict``) of one cell."""
    preset: ScalePreset = PRESETS[scale][cell.modality]
    dataset, _ = DATASETS[cell.modality]
    segmentation = cell.modality is not Modality.HISTOPATHOLOGY
    copies = preset.paper_copies if _makes_copies(cell) else 1
    split_name = f"split-{cell.protocol}" + (f"-x{copies}" if cell.protocol == "paper" else "")
    base = out / cell.modality.value / cell.protocol
    preprocess: dict[str, Any] = {"resize_mode": "stretch", "normalisation": "unit"}
    if cell.modality is Modality.MAMMOGRAPHY:
        preprocess |= {"crop_breast": True, "canonical_orientation": True}
    return {
        "stage": cell.modality.value,
        "task": "segmentation" if segmentation else "classification",
        "seed": seed,
        "device": device,
        "output_dir": str(base / cell.id),
        "progress": False,
        "data": {
            "dataset": dataset,
            "root": str(data_root),
            "split_file": str(base / f"{split_name}.json"),
            "protocol": cell.protocol,
            "seed": seed,
            "paper_copies": preset.paper_copies,
            "max_samples": preset.max_samples,
        },
        "model": {
            "name": preset.substitutes.get(cell.model, cell.model),
            "width": preset.widths.get(cell.model),
            "in_channels": 1 if segmentation else 3,
            "num_classes": None if segmentation else 2,
            "input_size": preset.input_size,
            "options": preset.options.get(cell.model, {}),
        },
        "preprocess": preprocess,
        "loss": {"name": cell.loss, "malignancy_weight": 0.2 if segmentation else 0.0},
        "augment": _augment(cell),
        "optim": {
            "lr": preset.lr,
            # the paper protocol's copies make each epoch `copies` times longer: same image count
            "epochs": max(1, math.ceil(preset.epochs / copies)),
            "batch_size": preset.batch_size,
            "patience": preset.patience,
        },
        "monitor": "dice" if segmentation else "balanced_accuracy",
    }


def read_cell_status(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / CELL_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def run_cell(
    cell: Cell, scale: Scale, data_root: Path, out: Path, *, seed: int = 0, device: str = "auto"
) -> dict[str, Any]:
    """Train one cell unless it is done; returns its status record."""
    from training.trainer import train

    raw = cell_config(cell, scale, data_root, out, seed=seed, device=device)
    run_dir = Path(raw["output_dir"])
    status = read_cell_status(run_dir)
    if status is not None and status.get("status") == "done":
        return status
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    record: dict[str, Any] = {"cell": asdict(cell), "scale": scale.value, "seed": seed}
    try:
        result = train(config_from_dict(raw), resume=True)
    except (BreastdxError, RuntimeError, ValueError, OSError) as exc:
        logger.error("cell %s/%s failed: %s", cell.protocol, cell.id, exc)
        record |= {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    else:
        record |= {"status": "done", "epochs": result.last_epoch, "best_epoch": result.best_epoch}
        # last.pt (weights + optimiser state) only serves resuming an unfinished cell; a grid
        # of VGG19/ResNet cells would otherwise keep gigabytes of it. best.pt stays.
        result.last_checkpoint.unlink(missing_ok=True)
    record["seconds"] = round(time.monotonic() - start, 1) + float(
        (status or {}).get("seconds", 0.0)
    )
    (run_dir / CELL_FILE).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    return record


def run_grid(
    cells: list[Cell],
    scale: Scale,
    data_roots: dict[Modality, Path],
    out: Path,
    *,
    seed: int = 0,
    device: str = "auto",
    threads: int = 0,
) -> list[dict[str, Any]]:
    """Run every cell in order (resuming), logging progress; failures do not stop the grid.

    ``threads``: torch CPU threads (0: leave torch's default).
    """
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    records = []
    for i, cell in enumerate(cells, 1):
        logger.info("[%d/%d] %s %s %s", i, len(cells), cell.modality, cell.protocol, cell.id)
        records.append(
            run_cell(cell, scale, data_roots[cell.modality], out, seed=seed, device=device)
        )
    return records
