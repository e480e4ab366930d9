"""Export parity: torch eager vs ONNX Runtime on the same preprocessed real images.

Images are decoded with ``imaging.decode`` and preprocessed with
``imaging.preprocess.preprocess_decoded`` under the run's ``PreprocessConfig``: the very path the
service takes. Raw outputs become probabilities (sigmoid for ``mask_logits`` and
``malignancy_logit``, softmax for ``class_logits``, temperature 1) and are compared:

- ``max_abs_prob_diff``: the largest absolute difference over every probability of every output;
- ``mask_agreement``: the fraction of mask pixels on the same side of 0.5 (segmentation only).

An export fails with :class:`ParityError` (figures in the message and the context) when either
figure misses its tolerance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from breastdx.errors import BreastdxError
from imaging import decode
from imaging.preprocess import PreprocessConfig, preprocess_decoded
from models_registry.card import Parity

logger = logging.getLogger(__name__)

MASK_OUTPUT = "mask_logits"
SOFTMAX_OUTPUTS = frozenset({"class_logits"})
MASK_THRESHOLD = 0.5
CHUNK = 16  # images per forward pass, to bound memory at large input sizes

Outputs = dict[str, np.ndarray]


class ExportError(BreastdxError):
    """A checkpoint could not be exported to ONNX or described by a card."""

    code = "export_error"
    title = "Model export failed"


class ParityError(ExportError):
    """The ONNX file's outputs differ from the reference by more than the stated tolerance."""

    code = "onnx_parity_failed"
    title = "ONNX parity check failed"


@dataclass(frozen=True)
class Tolerance:
    """Bounds one parity check must meet."""

    prob: float  # max absolute probability difference
    mask_agreement: float  # min fraction of mask pixels thresholded alike (segmentation)


FP32_TOLERANCE = Tolerance(prob=1e-4, mask_agreement=0.999)
FP16_TOLERANCE = Tolerance(prob=1e-2, mask_agreement=0.99)
# fp16 weight storage (training.export_weights): weights rounded to float16, compute float32
WEIGHTS_FP16_TOLERANCE = Tolerance(prob=2e-3, mask_agreement=0.995)


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
        )


def load_images(sources: Sequence[Path], config: PreprocessConfig) -> np.ndarray:
    """Decode and preprocess image files as serving does: ``(N, C, H, W)`` float32."""
    if not sources:
        raise ExportError("the parity check needs at least one image")
    arrays = []
    for source in sources:
        chw, _, _ = preprocess_decoded(decode(Path(source)), config)  # (C, H, W)
        arrays.append(chw)
    return np.stack(arrays)  # (N, C, H, W)


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


@torch.no_grad()
def torch_outputs(model: nn.Module, batch: np.ndarray, names: Sequence[str]) -> Outputs:
    """Eager outputs of ``model`` (eval mode, CPU) over ``batch``, in chunks."""
    model.eval()
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, len(batch), CHUNK):
        result = model(torch.from_numpy(batch[start : start + CHUNK]))
        for name in names:
            parts[name].append(result[name].float().cpu().numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


def onnx_outputs(path: Path, batch: np.ndarray, names: Sequence[str]) -> Outputs:
    """ONNX Runtime (CPU) outputs of the file at ``path`` over ``batch``, in chunks."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, len(batch), CHUNK):
        values = session.run(list(names), {input_name: batch[start : start + CHUNK]})
        for name, value in zip(names, values, strict=True):
            parts[name].append(np.asarray(value, dtype=np.float32))
    return {name: np.concatenate(values) for name, values in parts.items()}


def compare(
    reference: Outputs, candidate: Outputs, tolerance: Tolerance, label: str
) -> ParityReport:
    """Parity figures of ``candidate`` against ``reference`` (both raw outputs)."""
    ref, cand = to_probabilities(reference), to_probabilities(candidate)
    if set(ref) != set(cand):
        raise ExportError(f"{label}: outputs differ: {sorted(ref)} vs {sorted(cand)}")
    diff = 0.0
    for name in ref:
        if ref[name].shape != cand[name].shape:
            raise ParityError(
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


def require(report: ParityReport) -> ParityReport:
    """Return ``report`` if it meets its tolerance, else raise :class:`ParityError`."""
    if report.ok:
        logger.info("parity ok: %s", report.describe())
        return report
    raise ParityError(
        f"the ONNX export does not reproduce its reference: {report.describe()}",
        label=report.label,
        max_abs_prob_diff=report.max_abs_prob_diff,
        mask_agreement=report.mask_agreement,
        n_images=report.n_images,
        tolerance=report.tolerance.prob,
        min_mask_agreement=report.tolerance.mask_agreement,
    )


def check_onnx(
    reference: Outputs | Callable[[], Outputs],
    onnx_path: Path,
    batch: np.ndarray,
    *,
    tolerance: Tolerance,
    label: str,
) -> ParityReport:
    """Run ``onnx_path`` on ``batch`` and require parity with ``reference`` outputs."""
    ref = reference() if callable(reference) else reference
    candidate = onnx_outputs(onnx_path, batch, list(ref))
    return require(compare(ref, candidate, tolerance, label))
