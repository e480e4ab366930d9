"""Parity figures of one model's outputs against a reference's, torch-free.

Raw outputs become probabilities (softmax for ``class_logits``, sigmoid for every other output,
temperature 1) and are compared:

- ``max_abs_prob_diff``: the largest absolute difference over every probability of every output;
- ``mask_agreement``: the fraction of mask pixels on the same side of 0.5 (segmentation only).

Export (``training.parity``) compares torch with each runtime on real test images; the runtime
gate (:func:`gate`) compares a runtime with ONNX Runtime on CPU, the reference every card's
``parity`` was measured against, on inputs made from the card's input spec
(:func:`gate_inputs`), within the card's own tolerance (:func:`card_tolerance`; for a
reduced-precision runtime, the looser bounds its card entry records, made by :func:`loosened`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models_registry.card import ModelCard, Parity, Runtime
from models_registry.runtime import CPU_ONLY, Session, open_session, run_batched

MASK_OUTPUT = "mask_logits"
SOFTMAX_OUTPUTS = frozenset({"class_logits"})
MASK_THRESHOLD = 0.5
GATE_IMAGES = 4
GATE_MARGIN = 2.0  # a reduced-precision runtime's gate bounds: twice what was measured

Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class Tolerance:
    """Bounds one parity check must meet."""

    prob: float  # max absolute probability difference
    mask_agreement: float  # min fraction of mask pixels thresholded alike (segmentation)


FP32_TOLERANCE = Tolerance(prob=1e-4, mask_agreement=0.999)


@dataclass(frozen=True)
class ParityReport:
    """Figures of one comparison, with the tolerance they were held to."""

    label: str  # what was compared, e.g. "torch vs onnx fp32"
    max_abs_prob_diff: float
    mask_agreement: float | None
    n_images: int
    tolerance: Tolerance

    @property
    def ok(self) -> bool:
        agree = self.mask_agreement is None or self.mask_agreement >= self.tolerance.mask_agreement
        return self.max_abs_prob_diff <= self.tolerance.prob and agree

    def describe(self) -> str:
        """One line of figures, e.g. for a log or an error message."""
        text = (
            f"{self.label} on {self.n_images} image(s): max |prob diff| "
            f"{self.max_abs_prob_diff:.3g} (tolerance {self.tolerance.prob:g})"
        )
        if self.mask_agreement is not None:
            text += (
                f", mask agreement {self.mask_agreement:.6f} "
                f"(minimum {self.tolerance.mask_agreement:g})"
            )
        return text

    def to_card(self) -> Parity:
        return Parity(
            max_abs_prob_diff=float(self.max_abs_prob_diff),
            mask_agreement=self.mask_agreement,
            n_images=self.n_images,
            tolerance=self.tolerance.prob,
            min_mask_agreement=self.tolerance.mask_agreement,
        )


class OutputsDifferError(ValueError):
    """Reference and candidate do not hold the same outputs, or not of the same shapes."""


def to_probabilities(outputs: Outputs) -> Outputs:
    """Sigmoid (or softmax for class logits) of every raw output, float64."""
    probs: Outputs = {}
    for name, values in outputs.items():
        logits = values.astype(np.float64)
        if name in SOFTMAX_OUTPUTS:
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs[name] = shifted / shifted.sum(axis=1, keepdims=True)
        else:
            probs[name] = 0.5 * (1.0 + np.tanh(0.5 * logits))
    return probs


def compare(
    reference: Outputs, candidate: Outputs, tolerance: Tolerance, label: str
) -> ParityReport:
    """Parity figures of ``candidate`` against ``reference`` (both raw outputs).

    Raises:
        OutputsDifferError: the two hold other output names or shapes.
    """
    ref, cand = to_probabilities(reference), to_probabilities(candidate)
    if set(ref) != set(cand):
        raise OutputsDifferError(f"{label}: outputs differ: {sorted(ref)} vs {sorted(cand)}")
    diff = 0.0
    for name in ref:
        if ref[name].shape != cand[name].shape:
            raise OutputsDifferError(
                f"{label}: output {name} has shape {list(cand[name].shape)}, the reference "
                f"{list(ref[name].shape)}"
            )
        diff = max(diff, float(np.max(np.abs(ref[name] - cand[name]), initial=0.0)))
    agreement = None
    if MASK_OUTPUT in ref:
        same = (ref[MASK_OUTPUT] >= MASK_THRESHOLD) == (cand[MASK_OUTPUT] >= MASK_THRESHOLD)
        agreement = float(same.mean())
    n_images = int(next(iter(ref.values())).shape[0])
    return ParityReport(label, diff, agreement, n_images, tolerance)


def card_tolerance(card: ModelCard, runtime: Runtime | None = None) -> Tolerance:
    """The bounds the card's own export parity was held to (float32 bounds where unrecorded);
    for a reduced-precision ``runtime`` the card lists, the looser gate bounds listed with it."""
    variant = card.reduced_variant(runtime) if runtime is not None else None
    recorded = variant.gate if variant is not None else card.parity
    return Tolerance(
        prob=recorded.tolerance if recorded.tolerance is not None else FP32_TOLERANCE.prob,
        mask_agreement=recorded.min_mask_agreement
        if recorded.min_mask_agreement is not None
        else FP32_TOLERANCE.mask_agreement,
    )


def gate_inputs(card: ModelCard, n: int = GATE_IMAGES, seed: int = 0) -> np.ndarray:
    """``(n, C, H, W)`` float32 inputs made the way serving makes them: smooth synthetic images
    (blobs on a gradient, with speckle) through the card's ``imaging.preprocess`` parameters."""
    from imaging.preprocess import preprocess  # lazy: the registry's import stays light

    config = card.preprocess_config()
    rng = np.random.default_rng(seed)
    height, width = (int(s * 1.5) for s in card.input.size)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)  # (H, W) in [0, 1)
    images = []
    for _ in range(n):
        field = 0.2 + 0.3 * (yy * rng.uniform(-1, 1) + xx * rng.uniform(-1, 1))
        for _ in range(int(rng.integers(2, 6))):
            cy, cx, radius = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.03, 0.2)
            field = field + rng.uniform(-0.4, 0.6) * np.exp(
                -((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2)
            )
        tint = rng.uniform(0.7, 1.0, size=3)  # (3,): a coloured image where the card takes RGB
        image = field[..., None] * tint + rng.normal(0.0, 0.03, size=(height, width, 3))
        chw, _ = preprocess(np.clip(image, 0.0, 1.0).astype(np.float32), config)  # (C, h, w)
        images.append(chw)
    return np.stack(images)  # (n, C, h, w)


def reference_outputs(card: ModelCard, path: Path, batch: np.ndarray) -> Outputs:
    """ONNX Runtime on CPU (float32, the gate's reference) over ``batch``."""
    return session_outputs(open_session(path, options=CPU_ONLY), card, batch)


def session_outputs(session: Session, card: ModelCard, batch: np.ndarray) -> Outputs:
    """Every carded output of ``session`` over ``batch``."""
    return run_batched(session, card.input.name, batch, [o.name for o in card.outputs])


def gate(
    card: ModelCard, candidate: Session, reference: Outputs, batch: np.ndarray
) -> ParityReport:
    """``candidate`` vs the ONNX Runtime CPU ``reference`` on ``batch``, within the card's
    tolerance; a candidate with several forms (:meth:`Session.forms`) answers its worst one."""
    label = f"onnxruntime (CPU) vs {candidate.label}"
    tolerance = card_tolerance(card, candidate.runtime)
    reports = []
    for form in candidate.forms():  # a runtime that keeps several forms: each is checked
        try:
            outputs = session_outputs(form, card, batch)
            reports.append(compare(reference, outputs, tolerance, label))
        except OutputsDifferError as exc:  # a runtime that changes outputs fails outright
            return ParityReport(f"{label} ({exc})", float("inf"), None, len(batch), tolerance)
    return max(reports, key=lambda r: (not r.ok, r.max_abs_prob_diff))  # the worst form


def loosened(report: ParityReport, floor: Tolerance, margin: float = GATE_MARGIN) -> Tolerance:
    """Gate bounds for a reduced-precision runtime from its measured ``report``: ``margin``
    times the measured difference (rounded up to one significant digit) and disagreement,
    never tighter than ``floor`` (the card's float32 bounds)."""
    prob = max(floor.prob, _round_up(margin * report.max_abs_prob_diff))
    agreement = floor.mask_agreement
    if report.mask_agreement is not None:
        loose = 1.0 - margin * (1.0 - report.mask_agreement)
        agreement = min(agreement, math.floor(loose * 1e4) / 1e4)
    return Tolerance(prob=prob, mask_agreement=max(0.0, agreement))


def _round_up(value: float) -> float:
    """``value`` rounded up to one significant digit (``6.6e-3`` -> ``7e-3``)."""
    if value <= 0.0 or not math.isfinite(value):
        return value
    scale = 10.0 ** math.floor(math.log10(value))
    return math.ceil(value / scale - 1e-9) * scale
