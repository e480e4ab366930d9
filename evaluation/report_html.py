"""``report.html``: one self-contained page (plots inlined as PNG data URIs), readable offline."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any

from service.inference.result import DISCLAIMER

STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; }
td, th { border: 1px solid #ccc; padding: 4px 10px; text-align: left; }
th { background: #f2f2f2; }
.note { color: #555; font-size: 0.92em; }
.warn { background: #fff3cd; padding: 0.6em; border: 1px solid #e0c060; }
img { max-width: 100%; border: 1px solid #ddd; margin: 4px 0; }
"""

LABELS = {
    "dice": "Dice (lesion images)",
    "iou": "IoU (lesion images)",
    "hd95_px": "Hausdorff-95 (px)",
    "hd95_mm": "Hausdorff-95 (mm)",
    "false_lesion_rate": "False-lesion rate (lesion-free images)",
    "unmarked_lesion_rate": "Lesion images left unmarked",
    "dice_marked": "Dice (lesion images marked)",
    "auc": "ROC AUC",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "balanced_accuracy": "Balanced accuracy",
    "accuracy": "Accuracy",
    "ece": "ECE (15 bins)",
    "brier": "Brier score",
    "burden_mae": "Mean |probability - positive patch share|",
}


def _figure(value: dict[str, Any] | None) -> str:
    if not value or value.get("value") is None:
        return "<td>n/a</td><td></td><td></td>"
    low, high = value.get("ci_low"), value.get("ci_high")
    interval = f"{low:.3f} - {high:.3f}" if low is not None and high is not None else ""
    return f"<td>{value['value']:.3f}</td><td>{interval}</td><td>{value['n']}</td>"


def _table(block: dict[str, Any], keys: list[str]) -> str:
    rows = "".join(
        f"<tr><td>{escape(LABELS.get(k, k))}</td>{_figure(block.get(k))}</tr>"
        for k in keys
        if k in block
    )
    return f"<table><tr><th>figure</th><th>value</th><th>95 % CI</th><th>n</th></tr>{rows}</table>"


def _image(folder: Path, relative: str | None, alt: str) -> str:
    if not relative:
        return ""
    data = base64.b64encode((folder / relative).read_bytes()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _dataset(folder: Path, ds: dict[str, Any]) -> str:
    parts = [f"<h2>{escape(ds['display'])} <span class=note>({escape(ds['root'])})</span></h2>"]
    split = ds.get("split")
    where = f"split {escape(split['file'])}, subset {escape(split['subset'])}" if split else "all"
    parts.append(
        f"<p>Cases: {ds['n_cases']} ({where}); scored {ds['n_scored']}, skipped "
        f"{ds['n_skipped']}; intervals resample {ds['bootstrap_unit']}. Data fingerprint "
        f"<code>{ds['fingerprint'][:16]}</code>.</p>"
    )
    if ds["skipped"]:
        items = "".join(f"<li>{escape(s['message'])}</li>" for s in ds["skipped"][:50])
        parts.append(f"<div class=warn>Skipped cases:<ul>{items}</ul></div>")
    plots = ds.get("plots", {})
    if seg := ds.get("segmentation"):
        parts.append(
            f"<h3>Segmentation</h3><p class=note>{seg['n_lesion_images']} lesion images, "
            f"{seg['n_lesion_free_images']} lesion-free; Hausdorff-95 {escape(seg['hd95_note'])}."
            "</p>"
        )
        keys = ["dice", "unmarked_lesion_rate", "dice_marked", "iou", "hd95_px", "hd95_mm"]
        parts.append(_table(seg, [*keys, "false_lesion_rate"]))
        parts.append(_image(folder, plots.get("dice_histogram"), "Dice histogram"))
    if det := ds.get("detection"):
        rows = "".join(
            f"<tr><td>sensitivity at {p['fp_per_image']:g} FP/image</td>{_figure(p)}</tr>"
            for p in det["froc"]
        )
        rows += f"<tr><td>mean sensitivity</td>{_figure(det['mean_sensitivity'])}</tr>"
        point = det.get("operating_point") or {}  # absent from reports written before it
        for key, label in (("sensitivity", "sensitivity"), ("fp_per_image", "FP/image")):
            if point.get(key):
                rows += f"<tr><td>at the card's operating point: {label}</td>"
                rows += f"{_figure(point[key])}</tr>"
        parts.append(
            f"<h3>Detection (FROC)</h3><p class=note>{det['n_lesions']} true lesions on "
            f"{det['n_images']} images. Hit rule: {escape(det['hit_rule'])}. "
            f"{escape(det['mark_score'])}.</p><table><tr><th>figure</th><th>value</th>"
            f"<th>95 % CI</th><th>n</th></tr>{rows}</table>"
        )
        parts.append(_image(folder, plots.get("froc"), "FROC"))
    for key, title in (
        ("classification", "Malignancy classification"),
        ("classification_per_patient", "Per patient"),
    ):
        if cls := ds.get(key):
            counts = ", ".join(f"{k} {v}" for k, v in cls["class_counts"].items())
            parts.append(
                f"<h3>{title}</h3><p class=note>Threshold {cls['threshold']:g} (the model "
                f"card's); {counts}. {escape(cls.get('rule', ''))}</p>"
            )
            parts.append(_table(cls, list(LABELS)[5:]))
    parts.append(_image(folder, plots.get("roc"), "ROC"))
    parts.append(_image(folder, plots.get("reliability"), "Reliability diagram"))
    for kind, title in (("worst", "The 12 worst cases"), ("typical", "12 typical cases")):
        if plots.get(f"gallery_{kind}"):
            parts.append(
                f"<h3>{title}</h3><p class=note>Truth green, model red (outlines at the "
                "image's original geometry; boxes where the truth is a box or circle).</p>"
            )
            parts.append(_image(folder, plots.get(f"gallery_{kind}"), title))
    return "\n".join(parts)


def _runtime(runtime: dict[str, Any] | None) -> str:
    if not runtime:
        return ""
    return f", run on {escape(runtime['runtime'])} ({escape(runtime['device'])})"


def write_html(folder: Path, document: dict[str, Any]) -> Path:
    model = document["model"]
    body = "\n".join(_dataset(folder, ds) for ds in document["datasets"])
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>breastdx evaluation: {escape(model["ref"])}</title>
<style>{STYLE}</style></head><body>
<h1>Evaluation of {escape(model["ref"])} ({escape(model["stage"])})</h1>
<p class=warn>{escape(DISCLAIMER)}</p>
<p>Model file sha256 <code>{model["sha256"]}</code>{_runtime(model.get("runtime"))}; created
{escape(document["created"])} by breastdx {escape(document["breastdx_version"])}. Figures at the
{escape(document["resolution"])}.
95 % percentile bootstrap intervals ({document["bootstrap"]["n_boot"]} resamples, seed
{document["bootstrap"]["seed"]}).</p>
<p>Command: <code>{escape(document["command"])}</code></p>
{body}
</body></html>
"""
    path = folder / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
