"""A segmentation model's operating point, chosen on the validation split at the ORIGINAL size.

The exported ONNX file runs over the run's validation images through the shared preprocessing
(``imaging.preprocess``), and its probability maps are mapped back through each image's geometry,
as the service does (``imaging.postprocess``). There, on validation data only:

- the pixel threshold ``mask`` and the lesion-presence threshold ``presence`` (a lesion is marked
  only where its peak probability reaches it) are chosen together, with ``image_presence`` for a
  model with a presence output (an image's lesions are marked only where that output's
  probability reaches it; 0 for other models), by one of two objectives:
  - segmentation (ultrasound; the default): the pair with the best mean lesion Dice on images
    that hold a lesion among those whose false-lesion rate on images without one stays within
    ``max_false_lesion_rate``;
  - detection (mammography; ``max_fp_per_image`` given): the pair that hits the most true
    lesions (the FROC's hit rule, ``imaging.lesion_match``) among those with at most
    ``max_fp_per_image`` false marks per image and a false-lesion rate on lesion-free images
    within ``max_false_lesion_rate``; ties go to fewer false marks, then the better Dice;
- the malignancy threshold maximises balanced accuracy of the calibrated image probability (the
  image head's, or with ``image_malignancy="lesion_weighted"`` the one the service derives from
  the lesions: the lesion malignancy map averaged with the lesion probabilities as weights,
  ``service.inference.pipeline.lesion_weighted_malignancy``, at the fitted lesion temperature);
- ``lesion_temperature`` calibrates the per-pixel malignancy output (where the model has one):
  each true lesion's mean logit against its image's label.

Figures on the test split are never looked at here; ``breastdx evaluate`` reports them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from imaging.geometry import Interpolation
from imaging.lesion_match import Box, mask_boxes, match_marks
from imaging.preprocess import preprocess
from imaging.record import Laterality
from training.calibration import fit_temperature
from training.metrics import balanced_accuracy
from training.models.heads import PRESENCE
from training.steps import sigmoid

logger = logging.getLogger(__name__)

MASK_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
PRESENCE_THRESHOLDS = tuple(round(float(t), 3) for t in np.linspace(0.5, 0.99, 50))
IMAGE_PRESENCE_THRESHOLDS = tuple(round(float(t), 3) for t in np.linspace(0.05, 0.95, 19))
MALIGNANCY_THRESHOLDS = tuple(round(float(t), 3) for t in np.linspace(0.05, 0.95, 91))
LOGIT_EDGES = np.linspace(-16.0, 16.0, 257)  # lesion malignancy logits, binned for the weighted
LOGIT_CENTRES = (LOGIT_EDGES[:-1] + LOGIT_EDGES[1:]) / 2  # image score at any temperature


@dataclass
class _Case:
    """One validation image: per mask threshold, its components' (area, overlap, peak, box)."""

    label: int
    truth_area: int
    components: dict[float, np.ndarray]  # threshold -> (K, 7) area, overlap, peak, x, y, w, h
    malignancy_logit: float
    lesion_logit: float | None  # mean per-pixel malignancy logit over the true lesion
    truth_boxes: list[Box] = field(default_factory=list)  # each true lesion's box
    presence: float | None = None  # the presence output's probability, where the model has one
    # lesion-probability-weighted histogram of the lesion malignancy logits (LOGIT_EDGES)
    weighted_logits: np.ndarray | None = None


@dataclass(frozen=True)
class OperatingPoint:
    """The chosen thresholds and what they gave on validation (JSON-ready)."""

    mask: float
    presence: float
    malignancy: float
    lesion_temperature: float | None
    min_lesion_area_px: int
    val: dict[str, Any] = field(default_factory=dict)
    image_presence: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path


def _components(full: np.ndarray, truth: np.ndarray, threshold: float, min_area: int) -> np.ndarray:
    """``(K, 7)`` area, overlap with ``truth``, peak probability and box of each component."""
    binary = (full >= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    rows = []
    for i in range(1, count):
        area = int(stats[i, cv2.CC_STAT_AREA])
        if area < max(1, min_area):
            continue
        x, y, w, h = (int(v) for v in stats[i, :4])
        inside = labels[y : y + h, x : x + w] == i
        overlap = int(truth[y : y + h, x : x + w][inside].sum())
        peak = float(full[y : y + h, x : x + w][inside].max())
        rows.append((area, overlap, peak, x, y, w, h))
    return np.asarray(rows, np.float64).reshape(-1, 7)


def collect(
    session: Any,
    samples: list[Any],
    preprocess_config: Any,
    *,
    min_area: int,
    batch_size: int = 8,
) -> list[_Case]:
    """Run the ONNX ``session`` over ``samples`` and gather what the threshold search needs."""
    from training.data.dataset import load_sample

    names = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    cases: list[_Case] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        inputs, geometries, truths = [], [], []
        for sample in chunk:
            image, mask = load_sample(sample)  # (H, W, C) float32, (H, W) uint8
            laterality = getattr(sample, "laterality", Laterality.UNKNOWN)
            pixels, geometry = preprocess(
                image[..., 0] if image.shape[-1] == 1 else image,
                preprocess_config,
                laterality=laterality,
            )
            inputs.append(pixels)
            geometries.append(geometry)
            truths.append(mask > 0)
        outputs = dict(zip(names, session.run(names, {input_name: np.stack(inputs)}), strict=True))
        for k, sample in enumerate(chunk):
            prob = sigmoid(outputs["mask_logits"][k, 0].astype(np.float64)).astype(np.float32)
            full = geometries[k].to_original(prob, interpolation=Interpolation.LINEAR)
            truth = truths[k]
            lesion_logit, weighted, presence = None, None, None
            if PRESENCE in outputs:
                presence = float(sigmoid(outputs[PRESENCE][k].astype(np.float64))[0])
            if "lesion_malignancy_logits" in outputs:
                logits = outputs["lesion_malignancy_logits"][k, 0].astype(np.float64)
                clipped = np.clip(logits, LOGIT_EDGES[0], LOGIT_EDGES[-1])
                weighted = np.histogram(clipped, bins=LOGIT_EDGES, weights=prob)[0]
            if "lesion_malignancy_logits" in outputs and truth.any():
                small = geometries[k].apply_mask(truth.astype(np.uint8)) > 0  # model size
                if small.any():
                    lesion_logit = float(outputs["lesion_malignancy_logits"][k, 0][small].mean())
            cases.append(
                _Case(
                    label=int(sample.label),
                    truth_area=int(truth.sum()),
                    components={t: _components(full, truth, t, min_area) for t in MASK_THRESHOLDS},
                    malignancy_logit=float(outputs["malignancy_logit"][k].reshape(-1)[0]),
                    lesion_logit=lesion_logit,
                    truth_boxes=mask_boxes(truth),
                    weighted_logits=weighted,
                    presence=presence,
                )
            )
    return cases


def _kept(case: _Case, mask: float, presence: float, image: float) -> np.ndarray:
    """The case's components marked at (mask, presence, image presence) thresholds."""
    comps = case.components[mask]
    if case.presence is not None and case.presence < image:
        return comps[:0]
    return comps[comps[:, 2] >= presence] if len(comps) else comps


def _scores(
    cases: list[_Case], mask: float, presence: float, image: float = 0.0
) -> tuple[float, float]:
    """(mean Dice on lesion images, false-lesion rate on lesion-free images)."""
    dices, false = [], []
    for case in cases:
        kept = _kept(case, mask, presence, image)
        if case.truth_area == 0:
            false.append(float(len(kept) > 0))
            continue
        area, overlap = float(kept[:, 0].sum()), float(kept[:, 1].sum())
        dices.append(2.0 * overlap / (area + case.truth_area))
    dice = float(np.mean(dices)) if dices else float("nan")
    return dice, (float(np.mean(false)) if false else 0.0)


def _detection(
    cases: list[_Case], mask: float, presence: float, image: float = 0.0
) -> tuple[float, float]:
    """(share of true lesions hit, false marks per image) at one set of thresholds."""
    hit_count = false_marks = lesions = 0
    for case in cases:
        kept = _kept(case, mask, presence, image)
        marks = [((r[3], r[4], r[5], r[6]), r[2]) for r in kept]
        claimed = match_marks(marks, case.truth_boxes)
        hit_count += sum(claimed)
        false_marks += len(claimed) - sum(claimed)
        lesions += len(case.truth_boxes)
    return (hit_count / lesions if lesions else float("nan")), false_marks / max(1, len(cases))


def _lesion_weighted(cases: list[_Case], head: np.ndarray, lesion_temperature: float) -> np.ndarray:
    """Each case's lesion-weighted image malignancy at ``lesion_temperature`` (the head's
    probability where the case has no lesion probability or no lesion malignancy output)."""
    out = head.astype(np.float64).copy()
    values = sigmoid(LOGIT_CENTRES / lesion_temperature)
    for i, case in enumerate(cases):
        w = case.weighted_logits
        if w is not None and w.sum() > 1e-6:
            out[i] = float((w * values).sum() / w.sum())
    return out


def choose(
    cases: list[_Case],
    *,
    temperature: float,
    min_area: int,
    max_false_lesion_rate: float = 0.10,
    max_fp_per_image: float | None = None,
    image_malignancy: str = "head",
) -> OperatingPoint:
    """The operating point of the module docstring, from collected validation cases
    (the detection objective where ``max_fp_per_image`` is given)."""
    best: tuple[float, ...] | None = None
    chosen: tuple[float, ...] | None = None  # mask, presence, image, dice, false, sens, fp rate
    has_presence = any(c.presence is not None for c in cases)
    images = (0.0, *IMAGE_PRESENCE_THRESHOLDS) if has_presence else (0.0,)
    for mask, presence, image in product(MASK_THRESHOLDS, (0.0, *PRESENCE_THRESHOLDS), images):
        if presence and presence < mask:
            continue  # a kept component's peak is already >= mask
        dice, false = _scores(cases, mask, presence, image)
        if false > max_false_lesion_rate:
            continue
        if max_fp_per_image is None:
            key: tuple[float, ...] = (dice, -presence, -image)
            sensitivity, fp_rate = float("nan"), float("nan")
        else:
            sensitivity, fp_rate = _detection(cases, mask, presence, image)
            if fp_rate > max_fp_per_image:
                continue
            key = (sensitivity, -fp_rate, dice, -presence, -image)
        if best is None or key > best:
            best, chosen = key, (mask, presence, image, dice, false, sensitivity, fp_rate)
    if chosen is None:  # no set meets the rates: the strictest gates
        mask, presence, image = 0.5, PRESENCE_THRESHOLDS[-1], images[-1]
        dice, false = _scores(cases, mask, presence, image)
        sensitivity, fp_rate = _detection(cases, mask, presence, image)
    else:
        mask, presence, image, dice, false, sensitivity, fp_rate = chosen
    labels = np.asarray([c.label for c in cases])
    lesions = [(c.lesion_logit, c.label) for c in cases if c.lesion_logit is not None]
    lesion_temperature = None
    if len({y for _, y in lesions}) == 2:
        logits, ys = zip(*lesions, strict=True)
        lesion_temperature = float(fit_temperature(np.asarray(logits), np.asarray(ys)))
    probs = sigmoid(np.asarray([c.malignancy_logit for c in cases]) / temperature)
    if image_malignancy == "lesion_weighted":
        probs = _lesion_weighted(cases, probs, lesion_temperature or 1.0)
    bal = {t: balanced_accuracy(probs, labels, threshold=t) for t in MALIGNANCY_THRESHOLDS}
    malignancy = max(bal, key=lambda t: (bal[t], -abs(t - 0.5)))
    val = {
        "n_images": len(cases),
        "n_lesion_images": sum(c.truth_area > 0 for c in cases),
        "n_lesion_free_images": sum(c.truth_area == 0 for c in cases),
        "lesion_dice": dice,
        "false_lesion_rate": false,
        "max_false_lesion_rate": max_false_lesion_rate,
        "objective": "segmentation" if max_fp_per_image is None else "detection",
        "malignancy_balanced_accuracy": bal[malignancy],
        "image_malignancy": image_malignancy,
    }
    if max_fp_per_image is not None:
        val |= {
            "lesion_sensitivity": sensitivity,
            "false_marks_per_image": fp_rate,
            "max_fp_per_image": max_fp_per_image,
        }
    return OperatingPoint(
        mask=float(mask),
        presence=float(presence),
        malignancy=float(malignancy),
        lesion_temperature=lesion_temperature,
        min_lesion_area_px=min_area,
        val=val,
        image_presence=float(image),
    )


def tune(
    onnx_path: Path,
    run_dir: Path,
    *,
    split: str = "val",
    min_area: int,
    max_false_lesion_rate: float = 0.10,
    max_fp_per_image: float | None = None,
    image_malignancy: str = "head",
) -> OperatingPoint:
    """Choose the operating point of the exported ``onnx_path`` on the run's ``split``."""
    import onnxruntime as ort

    from training.checkpoint import CONFIG
    from training.config import load_config
    from training.data.splits import Split
    from training.export import SPLIT_FILE
    from training.torch_dataset import read_samples

    config = load_config(run_dir / CONFIG)
    ids = set(Split.load(run_dir / SPLIT_FILE).ids(split))
    samples = [s for s in read_samples(config.data.dataset.value, config.data.root) if s.id in ids]
    if not samples:
        from training.parity import ExportError

        raise ExportError(
            f"split {split!r} of the run's {SPLIT_FILE} holds no image of its data: the "
            "operating point needs labelled validation images (e.g. --operating-point-split val)"
        )
    from training.export_card import METRICS_FILE, read_run_json

    metrics = read_run_json(run_dir / METRICS_FILE, needed_by="the operating point")
    temperature = float(metrics.get("temperature") or 1.0)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logger.info("operating point: %d %s images", len(samples), split)
    cases = collect(session, samples, config.preprocess, min_area=min_area)
    point = choose(
        cases,
        temperature=temperature,
        min_area=min_area,
        max_false_lesion_rate=max_false_lesion_rate,
        max_fp_per_image=max_fp_per_image,
        image_malignancy=image_malignancy,
    )
    logger.info("operating point on %s: %s", split, point.to_dict())
    return point
