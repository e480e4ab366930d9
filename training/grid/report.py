"""Grid reports in the shapes of the paper's Tables 4-8 (Markdown and CSV), paper figures beside.

Segmentation cells show ``mIoU / Dice``: mIoU is the mean of foreground and background IoU with
counts pooled over the test set (as Keras ``MeanIoU``, our reading of the paper's IoU), Dice the
per-image foreground Dice averaged over test images (an empty prediction of an empty mask counts
1). Classification cells show test accuracy. Every run's full metrics, with bootstrap 95%
intervals, are in the CSV and in ``<run>/metrics.json``.
"""

from __future__ import annotations

import csv
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from breastdx.errors import BreastdxError
from training.grid.paper import (
    AUGMENTATION_TABLES,
    CLASSIFICATION_TABLE,
    CLS_MODELS,
    CLS_POLICIES,
    LOSS_TABLES,
    SEG_LOSSES,
    SEG_MODELS,
    SEG_POLICIES,
)
from training.grid.run import cell_config, read_cell_status
from training.grid.spec import PRESETS, Cell, Modality, Scale

SEG_METRICS = ("miou_fg_bg_pooled", "dice", "iou", "miou_fg_bg", "malignancy_auc")
CLS_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc", "ece")
PROTOCOL_TITLES = {
    "leakage_safe": "leakage-safe protocol (split by patient / near-duplicate group first, "
    "augment the training side on the fly)",
    "paper": "paper protocol (augmented copies made before a random split: leaks)",
}


@dataclass(frozen=True)
class CellResult:
    cell: Cell
    status: str  # done, failed, missing
    test: dict[str, Any]
    seconds: float | None
    epochs: int | None
    source: str = "run"  # "run": read from its run folder; otherwise where it was carried from

    def value(self, metric: str) -> float | None:
        entry = self.test.get(metric)
        value = entry.get("value") if isinstance(entry, dict) else entry
        return None if value is None else float(value)

    def interval(self, metric: str) -> tuple[float | None, float | None]:
        entry = self.test.get(metric)
        if not isinstance(entry, dict):
            return None, None
        return entry.get("ci_low"), entry.get("ci_high")


def collect(cells: list[Cell], scale: Scale, out: Path) -> list[CellResult]:
    """Read each cell's status and test metrics from its run folder."""
    results = []
    for cell in cells:
        run_dir = Path(cell_config(cell, scale, Path("."), out)["output_dir"])
        status = read_cell_status(run_dir) or {}
        metrics_path = run_dir / "metrics.json"
        test = {}
        if metrics_path.is_file():
            test = json.loads(metrics_path.read_text(encoding="utf-8")).get("test") or {}
        results.append(
            CellResult(
                cell,
                status.get("status", "missing"),
                test,
                status.get("seconds"),
                status.get("epochs"),
            )
        )
    return results


def carry_over(results: list[CellResult], csv_path: Path, source: str) -> list[CellResult]:
    """Cells with no finished run folder keep the figures of an earlier report's CSV.

    A run folder can be lost (a fresh checkout of a repository that did not keep it); the
    earlier report's row is then the only record of a real run. Carried cells are marked in the
    report and say where they came from; running the grid command retrains them.
    """
    if not csv_path.is_file():
        return results
    try:
        return _merge(results, _done_rows(csv_path), source)
    except (KeyError, ValueError, csv.Error) as exc:
        raise ReportError(
            f"{csv_path} is not a grid report CSV this code can carry figures over from "
            f"({type(exc).__name__}: {exc})"
        ) from exc


class ReportError(BreastdxError):
    """An earlier report that cannot be read."""

    code = "grid_report_unreadable"
    title = "Grid report unreadable"


def _done_rows(csv_path: Path) -> dict[tuple[str, str, str, str], dict[str, str]]:
    with csv_path.open(newline="", encoding="utf-8") as handle:
        return {
            (r["protocol"], r["model"], r["loss"], r["policy"]): r
            for r in csv.DictReader(handle)
            if r.get("status") == "done"
        }


def _merge(
    results: list[CellResult], rows: dict[tuple[str, str, str, str], dict[str, str]], source: str
) -> list[CellResult]:
    merged = []
    for r in results:
        row = rows.get((r.cell.protocol, r.cell.model, r.cell.loss, r.cell.policy))
        if r.status == "done" or row is None:
            merged.append(r)
            continue
        metrics = CLS_METRICS if r.cell.modality is Modality.HISTOPATHOLOGY else SEG_METRICS
        test = {
            m: {
                "value": _num(row.get(m)),
                "ci_low": _num(row.get(f"{m}_ci_low")),
                "ci_high": _num(row.get(f"{m}_ci_high")),
            }
            for m in metrics
        }
        previous = row.get("source") or "run"
        merged.append(
            CellResult(
                r.cell,
                "done",
                test,
                _num(row.get("seconds")),
                int(row["epochs"]) if row.get("epochs") else None,
                source if previous == "run" else previous,
            )
        )
    return merged


def _num(text: str | None) -> float | None:
    return float(text) if text not in (None, "") else None


def _mark(result: CellResult) -> str:
    return "" if result.source == "run" else " †"


def _f(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _seg_cell(result: CellResult | None, paper: tuple[float, float] | None) -> str:
    if result is None or result.status != "done":
        return "not run" if result is None or result.status == "missing" else result.status
    ours = f"{_f(result.value('miou_fg_bg_pooled'))} / {_f(result.value('dice'))}{_mark(result)}"
    return ours if paper is None else f"{ours} (paper {paper[0]:.3g} / {paper[1]:.3g})"


def _index(results: list[CellResult]) -> dict[tuple[str, str, str, str], CellResult]:
    return {(r.cell.protocol, r.cell.model, r.cell.loss, r.cell.policy): r for r in results}


def loss_table(modality: Modality, protocol: str, results: list[CellResult]) -> list[str]:
    """Table 4 (mammography) / Table 6 (ultrasound): losses on the original data."""
    idx, paper = _index(results), LOSS_TABLES[modality.value]
    names = {"bce": "BCE", "dice": "Dice", "tversky": "Tversky"}
    lines = ["| model | " + " | ".join(names[x] for x in SEG_LOSSES) + " |"]
    lines.append("|---" * (len(SEG_LOSSES) + 1) + "|")
    for model in SEG_MODELS:
        cells = [
            _seg_cell(idx.get((protocol, model, loss, "vanilla")), paper.get((model, loss)))
            for loss in SEG_LOSSES
        ]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def augmentation_table(modality: Modality, protocol: str, results: list[CellResult]) -> list[str]:
    """Table 5 (mammography) / Table 7 (ultrasound): by policy, Dice and Tversky losses."""
    idx, paper = _index(results), AUGMENTATION_TABLES[modality.value]
    columns = [(m, loss) for m in SEG_MODELS for loss in ("dice", "tversky")]
    lines = ["| policy | " + " | ".join(f"{m} {loss}" for m, loss in columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    for policy in SEG_POLICIES:
        cells = [
            _seg_cell(idx.get((protocol, m, loss, policy)), paper.get((policy, m, loss)))
            for m, loss in columns
        ]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return lines


def classification_table(protocol: str, results: list[CellResult]) -> list[str]:
    """Table 8: histopathology accuracy by policy and model, 95% interval in brackets."""
    idx = _index(results)
    lines = ["| policy | " + " | ".join(CLS_MODELS) + " |", "|---" * (len(CLS_MODELS) + 1) + "|"]
    for policy in CLS_POLICIES:
        cells = []
        for model in CLS_MODELS:
            r, paper = (
                idx.get((protocol, model, "ce", policy)),
                CLASSIFICATION_TABLE[(policy, model)],
            )
            if r is None or r.status != "done":
                cells.append("not run" if r is None or r.status == "missing" else r.status)
                continue
            low, high = r.interval("accuracy")
            cells.append(
                f"{_f(r.value('accuracy'))} [{_f(low)}, {_f(high)}]{_mark(r)} (paper {paper:.2f})"
            )
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return lines


def _paper_figure(cell: Cell) -> tuple[float | None, float | None]:
    if cell.modality is Modality.HISTOPATHOLOGY:
        return CLASSIFICATION_TABLE.get((cell.policy, cell.model)), None
    key = (cell.policy, cell.model, cell.loss)
    seg = AUGMENTATION_TABLES[cell.modality.value].get(key)
    if seg is None and cell.policy == "vanilla":
        seg = LOSS_TABLES[cell.modality.value].get((cell.model, cell.loss))
    return (seg[0], seg[1]) if seg else (None, None)


def write_csv(results: list[CellResult], path: Path) -> None:
    """One row per cell: every metric with its interval, the paper's figures and the difference."""
    metrics = (
        CLS_METRICS
        if results and results[0].cell.modality is Modality.HISTOPATHOLOGY
        else SEG_METRICS
    )
    header = ["protocol", "model", "loss", "policy", "status", "epochs", "seconds"]
    for m in metrics:
        header += [m, f"{m}_ci_low", f"{m}_ci_high"]
    header += ["paper_iou_or_accuracy", "paper_dice", "diff_iou_or_accuracy", "diff_dice"]
    header += ["source"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for r in results:
            c = r.cell
            row: list[Any] = [c.protocol, c.model, c.loss, c.policy, r.status, r.epochs, r.seconds]
            for m in metrics:
                row += [r.value(m), *r.interval(m)]
            paper_a, paper_b = _paper_figure(c)
            ours_a = r.value(
                "accuracy" if c.modality is Modality.HISTOPATHOLOGY else "miou_fg_bg_pooled"
            )
            ours_b = r.value("dice")
            row += [paper_a, paper_b]
            row += [None if ours_a is None or paper_a is None else round(ours_a - paper_a, 4)]
            row += [None if ours_b is None or paper_b is None else round(ours_b - paper_b, 4)]
            row += [r.source]
            writer.writerow(row)


def _split_counts(results: list[CellResult], scale: Scale, out: Path) -> list[str]:
    lines = []
    for protocol in sorted({r.cell.protocol for r in results}):
        base = out / results[0].cell.modality.value / protocol
        for split_file in sorted(base.glob("split-*.json")):
            data = json.loads(split_file.read_text(encoding="utf-8"))
            counts: dict[str, int] = {}
            for entry in data.get("entries", []):
                counts[entry["split"]] = counts.get(entry["split"], 0) + 1
            text = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            lines.append(f"- `{split_file.name}`: {text} (entries = images or augmented copies)")
    return lines


def _carried_note(results: list[CellResult]) -> list[str]:
    carried = [r for r in results if r.source != "run"]
    if not carried:
        return []
    sources = ", ".join(sorted({r.source for r in carried}))
    return [
        f"- † {len(carried)} cells carried over from an earlier report ({sources}): their run "
        "folders were not kept, their figures are that report's CSV rows; the command above "
        "retrains them"
    ]


def write_markdown(
    modality: Modality,
    results: list[CellResult],
    scale: Scale,
    out: Path,
    path: Path,
    *,
    command: str,
    commit: str | None,
    notes: str | None = None,
) -> None:
    """The report: command, setting, the paper-shaped tables per protocol, then notes."""
    preset = PRESETS[scale][modality]
    done = [r for r in results if r.status == "done"]
    hours = sum(r.seconds or 0 for r in results) / 3600
    lines = [
        f"# {modality.value.capitalize()} grid, scale `{scale.value}`",
        "",
        f"Regenerate: `{command}`",
        "",
        f"- commit `{commit or 'unknown'}`, machine {platform.machine()} "
        f"({platform.system()}), {len(done)}/{len(results)} cells done, {hours:.2f} h of training",
        f"- input {preset.input_size} px, {preset.epochs} epochs (paper-protocol runs with copies: "
        f"epochs / {preset.paper_copies}, the same number of images seen), batch "
        f"{preset.batch_size}, early-stopping patience {preset.patience}, widths "
        f"{preset.widths or 'model defaults'}, substitutes {preset.substitutes or 'none'}, "
        f"data subset {preset.max_samples or 'none'}",
        *_split_counts(results, scale, out),
        *_carried_note(results),
        "",
        __doc__.split("\n\n", 1)[1].strip() if __doc__ else "",
        "",
    ]
    for protocol in [p for p in PROTOCOL_TITLES if any(r.cell.protocol == p for r in results)]:
        lines += [f"## {PROTOCOL_TITLES[protocol]}", ""]
        if modality is Modality.HISTOPATHOLOGY:
            lines += [
                "### Table 8 shape: test accuracy",
                "",
                *classification_table(protocol, results),
                "",
            ]
            continue
        number = {"mammography": (4, 5), "ultrasound": (6, 7)}[modality.value]
        lines += [f"### Table {number[0]} shape: losses on the original data (mIoU / Dice)", ""]
        lines += [*loss_table(modality, protocol, results), ""]
        lines += [f"### Table {number[1]} shape: by augmentation (mIoU / Dice)", ""]
        lines += [*augmentation_table(modality, protocol, results), ""]
    if notes:
        lines += ["## Why our figures differ from the paper's", "", notes.strip(), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
