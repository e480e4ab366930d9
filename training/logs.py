"""Run logs: the per-epoch CSV, learning-curve plots and the progress bar."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
from tqdm import tqdm

T = TypeVar("T")
HISTORY = "history.csv"
CURVES = "learning_curves.png"


def progress(items: Iterable[T], *, enabled: bool, total: int, desc: str) -> Iterator[T]:
    """A tqdm bar with ETA, off when ``enabled`` is False or stderr is not a terminal."""
    show = enabled and sys.stderr.isatty()
    yield from tqdm(items, total=total, desc=desc, disable=not show, leave=False, unit="batch")


class EpochLog:
    """Appends one CSV row per epoch: epoch, train_loss, val_loss, val_<metric>..., lr, seconds."""

    def __init__(self, path: Path, metric_names: list[str]) -> None:
        self.path = path
        self.fields = ["epoch", "train_loss", "val_loss"]
        self.fields += [f"val_{n}" for n in metric_names] + ["lr", "seconds"]

    def truncate_after(self, epoch: int) -> None:
        """Drop rows after ``epoch`` (written before a crash that lost their checkpoint)."""
        if not self.path.exists():
            return
        with self.path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields, rows = list(reader.fieldnames or self.fields), list(reader)
        with self.path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(r for r in rows if int(r["epoch"]) <= epoch)

    def append(self, row: dict[str, Any]) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(v) for k, v in row.items()})

    def read(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with self.path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def plot_curves(rows: list[dict[str, str]], monitor: str, path: Path) -> Path:
    """Loss (train and validation) and the monitored metric against epoch, as one PNG."""
    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        ax_loss.plot(epochs, [float(r[key]) for r in rows], marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    ax_metric.plot(epochs, [float(r[f"val_{monitor}"]) for r in rows], marker="o", color="C2")
    ax_metric.set(xlabel="epoch", ylabel=monitor, title=f"Validation {monitor}")
    for ax in (ax_loss, ax_metric):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
