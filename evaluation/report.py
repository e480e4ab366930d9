"""The evaluation report: ``report.json`` (every figure) and the plots and gallery of each data set.

``dataset_section`` turns the case records of one data set into its figures; ``write_report``
writes ``report.json``, the PNG plots under ``plots/`` and ``report.html`` (``report_html``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from breastdx.errors import BreastdxError
from evaluation import figures, plots
from evaluation.cases import Case
from evaluation.lesions import FP_RATES
from evaluation.run import Skipped
from evaluation.score import truth_mask
from imaging import decode
from imaging.postprocess import to_uint8
from models_registry.card import ModelCard, Stage

if TYPE_CHECKING:
    from service.inference.runtime_choice import Selection

REPORT_FORMAT = "breastdx.evaluation/1"
GALLERY = 12


def fingerprint(records: Sequence[dict[str, Any]], skipped: Sequence[Skipped]) -> str:
    """sha256 over the evaluated cases: id, image sha256 and truth sha256s, in id order."""
    lines = sorted(
        f"{r['id']}\t{r['image_sha256']}\t{','.join(r['truth_sha256'])}" for r in records
    )
    lines += sorted(f"{s.id}\tskipped" for s in skipped)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def badness(record: dict[str, Any]) -> float:
    """How wrong the model was on a case (gallery order): 1 - Dice, misses, or |p - label|."""
    if record.get("dice") is not None:
        return 1.0 - float(record["dice"])
    if record.get("false_lesion") is not None:
        return float(record["false_lesion"])
    if "hits" in record:
        missed = len(record["truth_boxes"]) - sum(record["hits"])
        return missed + 0.25 * (len(record["hits"]) - sum(record["hits"]))
    if record["label"] is not None and record["probability"] is not None:
        return abs(float(record["probability"]) - record["label"])
    return 0.0


def pick_gallery(records: Sequence[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Ids of the ``GALLERY`` worst cases and of ``GALLERY`` typical ones (nearest the median)."""
    ranked = sorted(records, key=lambda r: (-badness(r), r["id"]))
    worst = ranked[:GALLERY]
    rest = ranked[GALLERY:]
    if not rest:
        return [r["id"] for r in worst], []
    median = float(np.median([badness(r) for r in records]))
    typical = sorted(rest, key=lambda r: (abs(badness(r) - median), r["id"]))[:GALLERY]
    return [r["id"] for r in worst], [r["id"] for r in typical]


def dataset_section(
    records: list[dict[str, Any]],
    skipped: list[Skipped],
    *,
    card: ModelCard,
    n_boot: int,
) -> dict[str, Any]:
    """Every figure of one data set (see ``evaluation.figures``)."""
    threshold = card.thresholds.malignancy
    groups = {r["group"] for r in records}
    section: dict[str, Any] = {
        "n_cases": len(records) + len(skipped),
        "n_scored": len(records),
        "n_skipped": len(skipped),
        "skipped": [s.to_dict() for s in skipped],
        "n_patients": sum(g.startswith("patient:") for g in groups) or None,
        "bootstrap_unit": "patients" if any(g.startswith("patient:") for g in groups) else "images",
        "fingerprint": fingerprint(records, skipped),
        "segmentation": figures.segmentation(records, n_boot),
        "detection": figures.detection(records, n_boot)
        if card.stage is Stage.MAMMOGRAPHY
        else None,
        "classification": figures.classification(records, threshold, n_boot),
        "classification_per_patient": figures.per_patient(records, threshold, n_boot)
        if card.stage is Stage.HISTOPATHOLOGY
        else None,
    }
    return section


def _contours(mask: np.ndarray) -> list[np.ndarray]:
    found, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return list(found)


def _box_contour(box: Sequence[float]) -> np.ndarray:
    x, y, w, h = box
    return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float64).reshape(-1, 1, 2)


def _tile(case: Case, record: dict[str, Any]) -> np.ndarray:
    shape = (int(record["image_hw"][0]), int(record["image_hw"][1]))
    try:
        display = to_uint8(decode(case.image_path).display(0))
        truth = _contours(truth_mask(case, shape)) if case.truth == "mask" else []
    except (BreastdxError, OSError):  # changed since it was scored (a resumed run)
        return plots.thumbnail(np.zeros((*shape, 3), np.uint8), [], [], f"{case.id}: unreadable")
    if case.circles or case.truth == "boxes":
        truth += [_box_contour(b) for b in record.get("truth_boxes", [])]
    pred = [np.array(c, np.float64).reshape(-1, 1, 2) for c in record["contours"] if c]
    if record.get("dice") is not None:
        caption = f"Dice {record['dice']:.2f} {case.id}"
    elif record["probability"] is not None:
        caption = f"p={record['probability']:.2f} y={record['label']} {case.id}"
    else:
        caption = case.id
    return plots.thumbnail(display, truth, pred, caption)


def write_plots(
    folder: Path,
    key: str,
    section: dict[str, Any],
    records: list[dict[str, Any]],
    cases: dict[str, Case],
) -> dict[str, str]:
    """PNG files of one data set under ``folder/plots``; returns kind -> relative path."""
    out: dict[str, np.ndarray] = {}
    cls = section["classification"]
    scored = [r for r in records if r["label"] is not None and r["probability"] is not None]
    if cls and len({r["label"] for r in scored}) == 2:
        probs = np.array([r["probability"] for r in scored], float)
        labels = np.array([r["label"] for r in scored], int)
        out["roc"] = plots.roc_plot(probs, labels, cls["auc"]["value"])
        out["reliability"] = plots.reliability_plot(probs, labels)
    det = section["detection"]
    if det:
        points = [p["value"] for p in det["froc"]]
        out["froc"] = plots.froc_plot(
            det["curve"]["fp_per_image"], det["curve"]["sensitivity"], FP_RATES, points
        )
    dice = [r["dice"] for r in records if r.get("dice") is not None]
    if dice:
        out["dice_histogram"] = plots.histogram_plot(
            np.array(dice), "Dice per lesion image", "Dice"
        )
    worst, typical = pick_gallery(records)
    by_id = {r["id"]: r for r in records}
    section["gallery"] = {"worst": worst, "typical": typical}
    for kind, ids in (("worst", worst), ("typical", typical)):
        if ids:
            out[f"gallery_{kind}"] = plots.grid([_tile(cases[i], by_id[i]) for i in ids])
    (folder / "plots").mkdir(parents=True, exist_ok=True)
    files = {}
    for kind, image in out.items():
        path = folder / "plots" / f"{key}_{kind}.png"
        path.write_bytes(plots.png_bytes(image))
        files[kind] = str(path.relative_to(folder))
    return files


def runtime_section(selection: Selection) -> dict[str, Any]:
    """The runtime that ran the model, as the report records it: what was asked for, what ran,
    and each runtime tried (parity against ONNX Runtime on CPU, time)."""
    return {
        "requested": str(selection.requested),
        "runtime": selection.runtime.value,
        "device": selection.device,
        "trials": [trial.describe() for trial in selection.trials],
    }


def report_document(
    card: ModelCard,
    command: str,
    datasets: list[dict[str, Any]],
    n_boot: int,
    runtime: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from breastdx import __version__

    return {
        "report_format": REPORT_FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "breastdx_version": __version__,
        "model": {
            "ref": card.ref,
            "name": card.name,
            "version": card.version,
            "sha256": card.onnx.sha256,
            "stage": card.stage.value,
            "task": card.task.value,
            "thresholds": card.thresholds.model_dump(),
            "temperature": card.calibration.temperature,
            "runtime": runtime,
        },
        "resolution": "original: masks mapped back to each image's own rows and columns",
        "bootstrap": {
            "n_boot": n_boot,
            "seed": figures.SEED,
            "level": 0.95,
            "method": "percentile; resamples patients where the data names them, else images",
        },
        "datasets": datasets,
    }


def write_json(folder: Path, document: dict[str, Any]) -> Path:
    path = folder / "report.json"
    path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return path


def _figure_text(figure: dict[str, Any] | None) -> str | None:
    if not figure or figure.get("value") is None:
        return None
    low, high = figure.get("ci_low"), figure.get("ci_high")
    interval = f" ({low:.3f}-{high:.3f})" if low is not None and high is not None else ""
    return f"{figure['value']:.3f}{interval}"


def summary_lines(document: dict[str, Any]) -> list[str]:
    """The headline figures of a report, one line per data set (what a terminal shows)."""
    lines = []
    for section in document["datasets"]:
        parts = [f"{section['display']}: {section['n_scored']} scored"]
        if section.get("n_skipped"):
            parts[0] += f", {section['n_skipped']} skipped"
        seg = section.get("segmentation") or {}
        det = section.get("detection") or {}
        cls = section.get("classification") or {}
        point = det.get("operating_point") or {}
        named = [
            ("Dice", seg.get("dice")),
            ("unmarked lesion images", seg.get("unmarked_lesion_rate")),
            ("Dice where marked", seg.get("dice_marked")),
            ("false-lesion rate", seg.get("false_lesion_rate")),
            *(
                (f"sensitivity at {p['fp_per_image']:g} FP/image", p)
                for p in det.get("froc", [])
                if p.get("fp_per_image") in (0.5, 1.0)
            ),
            ("sensitivity at the operating point", point.get("sensitivity")),
            ("its FP/image", point.get("fp_per_image")),
            ("AUC", cls.get("auc")),
            ("balanced accuracy", cls.get("balanced_accuracy")),
            ("ECE", cls.get("ece")),
        ]
        parts += [f"{name} {text}" for name, figure in named if (text := _figure_text(figure))]
        lines.append("; ".join(parts))
    return lines
