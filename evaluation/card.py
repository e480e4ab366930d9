"""Model-card figures from an evaluation: a new card version whose test metrics are this report's.

Registry versions are immutable, so an evaluated card is a NEW version of the model with the
same ONNX file (``breastdx evaluate ... --register``). Its ``evaluation_sets`` hold one entry per
evaluated data set (the split file, its sha256, class counts), its ``metrics`` the report's
figures at the original resolution (``resolution="original"``) with their 95 % intervals. Of the
earlier card's figures, measured inside training at the model's input size, only the paper-
comparison ones without an original-resolution counterpart stay (``PAPER_FIGURES``), labelled
``resolution="model_input"``. Evaluated on a reduced-precision runtime (``--runtime
openvino-bf16``, ``openvino-int8``, ``onnxruntime-int8``), the new version keeps the card's
figures (and its int8 file) and lists the runtime in
``reduced_precision`` with this report's figures instead (:func:`reduced_precision_draft`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluation.lesions import FP_RATES
from models_registry.card import (
    CardDraft,
    EvaluationProtocol,
    EvaluationSet,
    Fp16Export,
    Int8Export,
    Metric,
    ModelCard,
    OnnxExport,
    ReducedPrecision,
    Task,
)
from models_registry.errors import InvalidCardError
from models_registry.registry import Registry

if TYPE_CHECKING:
    from service.inference.runtime_choice import Selection

PAPER_FIGURES = frozenset({"miou_fg_bg", "miou_fg_bg_pooled", "pixel_accuracy"})
EVALUATED_NOTE = (
    "Test figures measured by 'breastdx evaluate' with this ONNX file at the original image "
    "resolution (the service's own pipeline, masks mapped back to each image's geometry); "
    "Dice and IoU average the images that hold a lesion, the false-lesion rate covers the others."
)
_OLD_BASELINE = "count an empty prediction on a lesion-free image as 1"
_TORCH_FIGURES = "The held-out metrics were measured with the float32 torch model."
_TORCH_FIGURES_NOW = (
    "The input-size figures (resolution model_input) were measured with the float32 torch model."
)


def metric_names(card: ModelCard) -> dict[str, str]:
    """Report key -> card metric name (a segmentation model's scores are ``malignancy_*``)."""
    prefix = "malignancy_" if card.task is Task.SEGMENTATION else ""
    names = {
        k: k
        for k in (
            "dice",
            "iou",
            "hd95_px",
            "hd95_mm",
            "false_lesion_rate",
            "unmarked_lesion_rate",
            "dice_marked",
        )
    }
    for key in ("auc", "sensitivity", "specificity", "balanced_accuracy", "accuracy", "ece"):
        names[f"classification.{key}"] = prefix + key
        names[f"classification_per_patient.{key}"] = f"patient_{key}"
    names["classification.brier"] = prefix + "brier"
    names["classification_per_patient.brier"] = "patient_brier"
    names["classification_per_patient.burden_mae"] = "patient_burden_mae"
    return names


def _figures(section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Flat ``report key -> figure`` of one data set's section."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in (section.get("segmentation") or {}).items():
        if isinstance(value, dict):
            out[key] = value
    for block in ("classification", "classification_per_patient"):
        for key, value in (section.get(block) or {}).items():
            if isinstance(value, dict) and "value" in value:
                out[f"{block}.{key}"] = value
    detection = section.get("detection") or {}
    for rate, point in zip(FP_RATES, detection.get("froc", []), strict=False):
        out[f"froc_sensitivity_at_{rate:g}_fp"] = point
    if detection:
        out["froc_mean_sensitivity"] = detection["mean_sensitivity"]
    for key, figure in (detection.get("operating_point") or {}).items():
        if isinstance(figure, dict):  # sensitivity, fp_per_image of the lesions the card reports
            out[f"operating_point_{key}"] = figure
    return out


def _metric(name: str, figure: dict[str, Any], evaluation: EvaluationSet) -> Metric | None:
    value, low, high = figure.get("value"), figure.get("ci_low"), figure.get("ci_high")
    if value is None or not figure.get("n"):
        return None
    interval = low is not None and high is not None
    return Metric(
        name=name,
        value=value,
        ci_low=min(low, value) if interval else None,
        ci_high=max(high, value) if interval else None,
        n=int(figure["n"]),
        dataset=evaluation.dataset,
        split=evaluation.split,
        protocol=evaluation.protocol,
        resolution="original",
    )


def evaluation_set(section: dict[str, Any], split: dict[str, Any]) -> EvaluationSet:
    """The card's record of one evaluated data set (``split``: the loaded split's facts)."""
    return EvaluationSet(
        dataset=section["display"],
        split=split["subset"],
        protocol=EvaluationProtocol(split["protocol"]),
        data_root=f"{section['root']} ({section['format']} format; breastdx evaluate, original "
        f"resolution; data fingerprint {section['fingerprint'][:16]})",
        split_file=Path(split["file"]).name,
        split_file_sha256=split["sha256"],
        unit="images",
        class_counts=dict(sorted(split["class_counts"].items())),
    )


def split_facts(path: Path, subset: str, ids: list[str], classes: dict[str, str]) -> dict[str, Any]:
    """What a card needs of a split: file, sha256, protocol, class counts of ``ids``."""
    import json

    document = json.loads(path.read_text(encoding="utf-8"))
    protocol = "leakage_safe" if document.get("protocol") == "leakage_safe" else "paper"
    return {
        "file": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "subset": subset,
        "protocol": protocol,
        "class_counts": dict(Counter(classes.get(i, "unknown") for i in ids)),
    }


def report_figures(
    card: ModelCard, report: dict[str, Any]
) -> tuple[list[EvaluationSet], list[Metric]]:
    """The evaluation sets and card metrics of ``report`` (one set per data set)."""
    names = metric_names(card)
    sets, metrics = [], []
    for section in report["datasets"]:
        if not section.get("split"):
            raise ValueError("a card's figures need a split: evaluate with --split FILE")
        evaluation = evaluation_set(section, section["split"])
        sets.append(evaluation)
        for key, figure in _figures(section).items():
            metric = _metric(names.get(key, key), figure, evaluation)
            if metric is not None:
                metrics.append(metric)
    return sets, metrics


def carded_draft(card: ModelCard, report: dict[str, Any]) -> CardDraft:
    """A draft of ``card`` whose test metrics and evaluation sets come from ``report``."""
    sets, metrics = report_figures(card, report)
    keys = {(e.dataset, e.split, e.protocol) for e in sets}
    fresh = {m.name for m in metrics}
    for old in card.metrics:
        where = (old.dataset, old.split, old.protocol)
        if old.name in PAPER_FIGURES and old.name not in fresh and where in keys:
            metrics.append(old.model_copy(update={"resolution": "model_input"}))
    body = card.model_dump(
        exclude={"name", "version", "registered_at", "onnx", "metrics", "evaluation_sets"}
    )
    # a reduced-precision entry compares itself with these figures: it stays only where every
    # figure it holds was measured on one of the new evaluation sets (else: evaluate it again)
    body["reduced_precision"] = [
        v.model_dump()
        for v in card.reduced_precision
        if all((m.dataset, m.split, m.protocol) in keys for m in v.metrics)
    ]
    kept = [i for i in card.limitations if _OLD_BASELINE not in i and i != EVALUATED_NOTE]
    body["limitations"] = [i.replace(_TORCH_FIGURES, _TORCH_FIGURES_NOW) for i in kept] + [
        EVALUATED_NOTE
    ]
    return CardDraft(
        name=card.name,
        onnx=onnx_export_of(card),
        metrics=metrics,
        evaluation_sets=sets,
        **body,
    )


def reduced_precision_draft(
    card: ModelCard, report: dict[str, Any], selection: Selection
) -> dict[str, Any]:
    """A draft of ``card`` listing ``selection``'s reduced-precision runtime in
    ``reduced_precision``: ``report``'s figures (breastdx evaluate on that runtime, on the
    card's own evaluation sets) and gate bounds loosened from its measured gate
    (``models_registry.parity.loosened``). The card's validation refuses a loss above 0.01.

    Raises:
        InvalidCardError: the report covers data the card's figures were not measured on, or
            the runtime was not gated.
    """
    from models_registry.parity import card_tolerance, loosened

    measured = next((t.parity for t in selection.trials if t.runtime is selection.runtime), None)
    if measured is None:
        raise InvalidCardError(f"{selection.runtime.value} was not gated: nothing to record")
    sets, metrics = report_figures(card, report)
    own = {_same_cases(e) for e in card.evaluation_sets}
    for evaluation in sets:
        if _same_cases(evaluation) not in own:
            raise InvalidCardError(
                f"{card.ref}: {evaluation.dataset} {evaluation.split} (split sha256 "
                f"{evaluation.split_file_sha256[:12]}) is not one of the card's evaluation sets; "
                "evaluate the runtime on the data and split of the card's own figures"
            )
    bounds = loosened(measured, card_tolerance(card))
    gate = measured.to_card().model_copy(
        update={"tolerance": bounds.prob, "min_mask_agreement": bounds.mask_agreement}
    )
    entry = ReducedPrecision(
        runtime=selection.runtime, device=selection.device, gate=gate, metrics=metrics
    )
    kept = [v for v in card.reduced_precision if v.runtime is not selection.runtime]
    body = card.model_dump(mode="json", exclude={"name", "version", "registered_at", "onnx"})
    fp16 = {"parity": card.onnx.fp16.parity.model_dump(mode="json")} if card.onnx.fp16 else None
    int8 = None
    if card.onnx.int8 is not None:
        int8 = {"quantization": card.onnx.int8.quantization.model_dump(mode="json")}
    return {
        **body,
        "onnx": {"opset": card.onnx.opset, "fp16": fp16, "int8": int8},
        "reduced_precision": [v.model_dump(mode="json") for v in [*kept, entry]],
    }


def _same_cases(evaluation: EvaluationSet) -> tuple[str, ...]:
    """What makes two evaluations cover the same cases (the data's folder may differ)."""
    counts = ",".join(f"{k}={v}" for k, v in sorted(evaluation.class_counts.items()))
    split = evaluation.split_file_sha256
    return (evaluation.dataset, evaluation.split, evaluation.protocol.value, split, counts)


def register_evaluated(
    registry: Registry,
    card: ModelCard,
    report: dict[str, Any],
    *,
    target: Registry | None = None,
    alias: str | None = None,
    selection: Selection | None = None,
) -> ModelCard:
    """Register the model's ONNX file again as a new version carrying ``report``'s figures:
    as its test metrics, or, where ``selection`` ran a reduced-precision runtime, as that
    runtime's ``reduced_precision`` entry.

    Raises:
        InvalidCardError: the new card does not validate (e.g. a loss above 0.01).
    """
    draft: CardDraft | dict[str, Any]
    if selection is not None and selection.runtime.reduced_precision:
        draft = reduced_precision_draft(card, report, selection)
    else:
        draft = carded_draft(card, report)
    return register_again(registry, card, draft, target=target, alias=alias)


def onnx_export_of(card: ModelCard, int8: Int8Export | None = None) -> OnnxExport:
    """The export facts of ``card``'s files for a new version of them (``int8``: those of a new
    int8 file instead of the card's own)."""
    fp16 = Fp16Export(parity=card.onnx.fp16.parity) if card.onnx.fp16 else None
    if int8 is None and card.onnx.int8 is not None:
        int8 = Int8Export(quantization=card.onnx.int8.quantization)
    return OnnxExport(opset=card.onnx.opset, fp16=fp16, int8=int8)


def register_again(
    registry: Registry,
    card: ModelCard,
    draft: CardDraft | dict[str, Any],
    *,
    target: Registry | None = None,
    alias: str | None = None,
    int8_path: Path | None = None,
) -> ModelCard:
    """Register ``card``'s ONNX files (its fp16 and int8 files where it has them; ``int8_path``:
    a new int8 file instead) as a new version of the model with ``draft`` as its card, in
    ``target`` (default: ``registry``)."""
    loaded = registry.load(card.ref)
    fp16_path = registry.load(card.ref, fp16=True).onnx_path if card.onnx.fp16 else None
    if int8_path is None and card.onnx.int8 is not None:
        int8_path = loaded.onnx_path.with_name(card.onnx.int8.file)
    return (target or registry).register(
        card.name, loaded.onnx_path, draft, fp16_path=fp16_path, int8_path=int8_path, alias=alias
    )
