"""Export parity: torch eager vs each runtime on the same preprocessed real images.

Images are decoded with ``imaging.decode`` and preprocessed with
``imaging.preprocess.preprocess_decoded`` under the run's ``PreprocessConfig``: the very path the
service takes. The figures (``max_abs_prob_diff``, ``mask_agreement``) and their comparison live
in ``models_registry.parity`` (torch-free, shared with the service's runtime gate); this module
adds the torch side. An export fails with :class:`ParityError` (figures in the message and the
context) when ONNX Runtime misses its tolerance; every other installed runtime is checked on the
same images with the same tolerance (:func:`check_runtimes`), and the card lists the ones that
pass (``runtimes``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from breastdx.errors import BreastdxError
from imaging import decode
from imaging.preprocess import PreprocessConfig, preprocess_decoded
from models_registry.card import Runtime, RuntimeParity
from models_registry.parity import (
    FP32_TOLERANCE,
    MASK_OUTPUT,
    MASK_THRESHOLD,
    SOFTMAX_OUTPUTS,
    Outputs,
    OutputsDifferError,
    ParityReport,
    Tolerance,
    to_probabilities,
)
from models_registry.parity import compare as compare_outputs
from models_registry.runtime import (
    CPU_ONLY,
    RuntimeOptions,
    installed_runtimes,
    open_session,
    run_batched,
)

__all__ = [
    "CHUNK",
    "FP16_TOLERANCE",
    "FP32_TOLERANCE",
    "MASK_OUTPUT",
    "MASK_THRESHOLD",
    "SOFTMAX_OUTPUTS",
    "WEIGHTS_FP16_TOLERANCE",
    "ExportError",
    "Outputs",
    "ParityError",
    "ParityReport",
    "Tolerance",
    "check_onnx",
    "check_runtimes",
    "compare",
    "load_images",
    "onnx_outputs",
    "require",
    "to_probabilities",
    "torch_outputs",
]

logger = logging.getLogger(__name__)

CHUNK = 16  # images per forward pass, to bound memory at large input sizes


class ExportError(BreastdxError):
    """A checkpoint could not be exported to ONNX or described by a card."""

    code = "export_error"
    title = "Model export failed"


class ParityError(ExportError):
    """The ONNX file's outputs differ from the reference by more than the stated tolerance."""

    code = "onnx_parity_failed"
    title = "ONNX parity check failed"


FP16_TOLERANCE = Tolerance(prob=1e-2, mask_agreement=0.99)
# fp16 weight storage (training.export_weights): weights rounded to float16, compute float32
WEIGHTS_FP16_TOLERANCE = Tolerance(prob=2e-3, mask_agreement=0.995)


def load_images(sources: Sequence[Path], config: PreprocessConfig) -> np.ndarray:
    """Decode and preprocess image files as serving does: ``(N, C, H, W)`` float32."""
    if not sources:
        raise ExportError("the parity check needs at least one image")
    arrays = []
    for source in sources:
        chw, _, _ = preprocess_decoded(decode(Path(source)), config)  # (C, H, W)
        arrays.append(chw)
    return np.stack(arrays)  # (N, C, H, W)


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


def onnx_outputs(
    path: Path,
    batch: np.ndarray,
    names: Sequence[str],
    runtime: Runtime = Runtime.ONNXRUNTIME,
) -> Outputs:
    """Outputs of the file at ``path`` over ``batch`` on ``runtime`` (ONNX Runtime: its CPU
    provider), in chunks."""
    options = CPU_ONLY if runtime is Runtime.ONNXRUNTIME else RuntimeOptions()
    session = open_session(path, runtime, options)
    return run_batched(session, "image", batch, names, CHUNK)


def compare(
    reference: Outputs, candidate: Outputs, tolerance: Tolerance, label: str
) -> ParityReport:
    """Parity figures of ``candidate`` against ``reference``; other outputs: ParityError."""
    try:
        return compare_outputs(reference, candidate, tolerance, label)
    except OutputsDifferError as exc:
        raise ParityError(str(exc)) from exc


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


def check_runtimes(
    reference: Outputs,
    onnx_path: Path,
    batch: np.ndarray,
    onnxruntime: ParityReport,
    *,
    tolerance: Tolerance,
) -> list[RuntimeParity]:
    """The card's ``runtimes``: ONNX Runtime (``onnxruntime``, already checked) and every other
    installed runtime whose outputs on ``batch`` meet ``tolerance`` against the torch
    ``reference``. A runtime that misses it is logged and left out: the service never runs the
    file on it."""
    listed = [RuntimeParity(runtime=Runtime.ONNXRUNTIME, device="CPUExecutionProvider",
                            parity=onnxruntime.to_card())]  # fmt: skip
    for runtime in installed_runtimes():
        if runtime is Runtime.ONNXRUNTIME:
            continue
        session = open_session(onnx_path, runtime)
        label = f"torch vs {session.label}"
        outputs = run_batched(session, "image", batch, list(reference), CHUNK)
        report = compare(reference, outputs, tolerance, label)
        if not report.ok:
            logger.warning("runtime left off the card: %s", report.describe())
            continue
        logger.info("parity ok: %s", report.describe())
        listed.append(
            RuntimeParity(runtime=runtime, device=session.device, parity=report.to_card())
        )
    return listed
