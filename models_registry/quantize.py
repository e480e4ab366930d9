"""Post-training static int8 quantisation of a registered ONNX file (``breastdx quantize``).

ONNX Runtime's quantiser (``onnxruntime.quantization``, part of the ``onnxruntime`` package;
its graph work needs ``onnx``, in the ``train`` extra) writes a QDQ model: int8 weights
(per output channel) and uint8 activations, each quantised tensor wrapped in
QuantizeLinear/DequantizeLinear pairs whose scales are fitted on calibration inputs. ONNX Runtime
runs it with its int8 kernels and OpenVINO compiles the pairs into int8 layers (VNNI/AMX on
CPUs that have them), so one file serves both int8 runtimes (``onnxruntime-int8``,
``openvino-int8``).

Calibration inputs are images of the model's TRAINING split, preprocessed exactly as serving
preprocesses them (the caller's job: :mod:`evaluation.cli_quantize`); test images never fit a
scale. A file whose weights are stored as float16 (``Cast`` nodes after float16 initialisers,
as export writes them to keep the store small) is first folded back to float32 initialisers,
which is what the quantiser expects.

Whether the int8 file may serve is not decided here: ``breastdx evaluate --runtime
openvino-int8 --register`` measures it on the card's test split and the card refuses it where a
Dice or AUC figure is more than 0.01 below float32 (``models_registry.card.MAX_PRECISION_LOSS``).
"""

from __future__ import annotations

import importlib
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models_registry.card import Quantization
from models_registry.errors import RegistryError

CalibrationMethod = Literal["minmax", "percentile", "entropy"]
CALIBRATION_BATCH = 16
FLOAT16 = 10  # onnx.TensorProto.FLOAT16


class QuantizationError(RegistryError):
    """The model could not be quantised (a missing package, a graph the quantiser refuses)."""

    code = "quantization_failed"
    title = "Quantisation failed"
    http_status = 422


@dataclass(frozen=True)
class QuantizeResult:
    path: Path  # the int8 file written
    quantization: Quantization  # what the card records


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise QuantizationError(
            f"int8 quantisation needs {module.split('.')[0]} "
            f"(pip install -c constraints.txt -e '.[train]'): {exc}"
        ) from exc


def fold_float16_weights(model: Any) -> int:
    """Replace every ``Cast`` of a float16 initialiser with a float32 initialiser of its output
    name (in place); returns how many were folded."""
    numpy_helper = _import("onnx.numpy_helper")
    inits = {init.name: init for init in model.graph.initializer}
    kept, folded = [], 0
    for node in model.graph.node:
        source = inits.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        if source is not None and source.data_type == FLOAT16:
            values = numpy_helper.to_array(source).astype(np.float32)
            model.graph.initializer.append(numpy_helper.from_array(values, node.output[0]))
            folded += 1
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    used = {name for node in model.graph.node for name in node.input}
    live = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(live)
    return folded


def quantize_int8(
    source: Path,
    out: Path,
    input_name: str,
    calibration: np.ndarray,
    *,
    described_as: str,
    method: CalibrationMethod = "minmax",
    per_channel: bool = True,
    exclude: Sequence[str] = (),
) -> QuantizeResult:
    """Write the int8 QDQ model of ``source`` (float32, or float16-stored weights) to ``out``.

    Args:
        input_name: the model's input tensor.
        calibration: ``(N, C, H, W)`` float32 preprocessed training images.
        described_as: what ``calibration`` is, for the card (data set, split part, count).
        exclude: node names kept in float32.

    Raises:
        QuantizationError: a package is missing, the inputs are empty or the quantiser failed.
    """
    if calibration.ndim != 4 or len(calibration) == 0:
        raise QuantizationError(
            f"calibration needs (N, C, H, W) images, got shape {calibration.shape}"
        )
    onnx = _import("onnx")
    ort = _import("onnxruntime")
    quantization = _import("onnxruntime.quantization")
    model = onnx.load(str(source))
    fold_float16_weights(model)
    batches = [
        {input_name: np.ascontiguousarray(calibration[i : i + CALIBRATION_BATCH], np.float32)}
        for i in range(0, len(calibration), CALIBRATION_BATCH)
    ]

    class _Reader(quantization.CalibrationDataReader):  # type: ignore[name-defined]
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    methods = {
        "minmax": quantization.CalibrationMethod.MinMax,
        "percentile": quantization.CalibrationMethod.Percentile,
        "entropy": quantization.CalibrationMethod.Entropy,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="breastdx-quantize-") as tmp:
        float32 = Path(tmp) / "float32.onnx"
        onnx.save(model, str(float32))
        try:
            quantization.quantize_static(
                str(float32),
                str(out),
                _Reader(),
                quant_format=quantization.QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8,
                calibrate_method=methods[method],
                nodes_to_exclude=list(exclude),
            )
        except Exception as exc:  # the quantiser raises assorted types
            raise QuantizationError(
                f"onnxruntime.quantization refused {source.name}: {exc}"
            ) from exc
    return QuantizeResult(
        path=out,
        quantization=Quantization(
            tool=f"onnxruntime.quantization {ort.__version__}",
            per_channel=per_channel,
            calibration_method=method,
            calibration=described_as,
            n_calibration_images=len(calibration),
            excluded_nodes=list(exclude),
        ),
    )


def first_and_last_nodes(path: Path) -> list[str]:
    """Names of the first and last Conv/Gemm/MatMul nodes of ``path``: the layers whose int8
    error costs most (the raw input's range, the logits), the usual ones to keep in float32."""
    onnx = _import("onnx")
    model = onnx.load(str(path), load_external_data=False)
    named = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    return [named[0], named[-1]] if len(named) > 1 else named
