"""Does an ONNX file honour its card? Checked with ONNX Runtime on CPU, imported lazily.

Used at registration (a file that does not match its card is never stored) and by
``Registry.verify``, which can also run :func:`runtime_checks`: the runtime parity gate
(``models_registry.parity``) for every installed runtime the card allows.

Shapes compare dim by dim: a fixed ONNX dim must equal the card's; a dynamic
ONNX dim accepts either a size or a symbol on the card; a symbol on the card needs a dynamic dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models_registry.card import InputSpec, ModelCard, OutputSpec, Runtime

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8"}


@dataclass(frozen=True)
class Check:
    """One named check with its outcome and a short explanation."""

    name: str
    ok: bool
    detail: str


def contract_checks(
    spec: InputSpec, outputs: Sequence[OutputSpec], path: Path, *, fp16: bool = False
) -> list[Check]:
    """ONNX Runtime loads ``path`` on CPU, its inputs and outputs match the card, a batch runs."""
    try:
        session = _cpu_session(path)
    except Exception as exc:  # onnxruntime raises several unrelated exception types
        return [Check(f"load {path.name}", False, _first_line(exc))]
    checks = [
        Check(f"load {path.name}", True, "onnxruntime CPU session created"),
        _input_check(session, spec, fp16),
        _output_check(session, outputs),
    ]
    if all(c.ok for c in checks):
        checks.append(_run_check(session, spec, outputs))
    return checks


def _cpu_session(path: Path) -> Any:
    import onnxruntime as ort  # lazy: only verification and registration need it

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _dims_match(card: Sequence[int | str], onnx: Sequence[int | str | None]) -> bool:
    """A fixed ONNX dim must equal the card's; a dynamic one accepts a card size or symbol."""
    if len(card) != len(onnx):
        return False
    return all(not isinstance(o, int) or c == o for c, o in zip(card, onnx, strict=True))


def _input_check(session: Any, spec: InputSpec, fp16: bool) -> Check:
    inputs = session.get_inputs()
    if [i.name for i in inputs] != [spec.name]:
        return Check(
            "inputs", False, f"card: one input {spec.name!r}; onnx: {[i.name for i in inputs]}"
        )
    shape, dtype = inputs[0].shape, _ORT_DTYPES.get(inputs[0].type, inputs[0].type)
    if not _dims_match(spec.shape(), shape):
        return Check("inputs", False, f"{spec.name}: card shape {spec.shape()}, onnx {shape}")
    allowed = {spec.dtype.value, "float16"} if fp16 else {spec.dtype.value}
    if dtype not in allowed:
        return Check("inputs", False, f"{spec.name}: card dtype {spec.dtype.value}, onnx {dtype}")
    return Check("inputs", True, f"{spec.name} {shape} {dtype}")


def _output_check(session: Any, outputs: Sequence[OutputSpec]) -> Check:
    onnx = {o.name: o.shape for o in session.get_outputs()}
    card = {o.name: o.shape for o in outputs}
    if set(onnx) != set(card):
        return Check("outputs", False, f"card outputs {sorted(card)}, onnx {sorted(onnx)}")
    bad = [
        f"{n}: card {card[n]}, onnx {onnx[n]}" for n in card if not _dims_match(card[n], onnx[n])
    ]
    return Check("outputs", not bad, "; ".join(bad) or ", ".join(sorted(card)))


def _run_check(session: Any, spec: InputSpec, outputs: Sequence[OutputSpec]) -> Check:
    import numpy as np

    batch = spec.batch if isinstance(spec.batch, int) else 2  # a dynamic batch: try 2
    dtype = _ORT_DTYPES.get(session.get_inputs()[0].type, spec.dtype.value)
    image = np.zeros((batch, spec.channels, *spec.size), dtype=dtype)  # (B, C, H, W)
    try:
        results = session.run([o.name for o in outputs], {spec.name: image})
    except Exception as exc:  # onnxruntime raises several unrelated exception types
        return Check("run", False, _first_line(exc))
    bad = []
    for out, result in zip(outputs, results, strict=True):
        expected = [batch if d == spec.batch else d for d in out.shape]
        fixed = [(e, g) for e, g in zip(expected, result.shape, strict=False) if isinstance(e, int)]
        if len(expected) != result.ndim or any(e != g for e, g in fixed):
            bad.append(f"{out.name}: card {out.shape}, got {list(result.shape)}")
    return Check(
        "run", not bad, "; ".join(bad) or f"a batch of {batch} ran, output shapes as carded"
    )


def runtime_checks(card: ModelCard, path: Path) -> list[Check]:
    """The parity gate of every runtime other than ONNX Runtime on CPU that the card allows:
    outputs on inputs made from the card's input spec within the card's tolerance. A runtime the
    card lists but this environment lacks is reported, not failed; one that misses the gate fails
    (the service would never run the file on it)."""
    from models_registry.errors import RegistryError
    from models_registry.parity import gate, gate_inputs, reference_outputs
    from models_registry.runtime import open_session, unavailable

    checks: list[Check] = []
    batch = gate_inputs(card)
    reference = None
    for runtime in Runtime:
        if runtime is Runtime.ONNXRUNTIME or not card.allows(runtime):
            continue
        name = f"runtime {runtime.value}"
        reason = unavailable(runtime)
        if reason is not None:
            checks.append(Check(name, True, f"not available here ({reason}); not checked"))
            continue
        try:
            reference = reference if reference is not None else reference_outputs(card, path, batch)
            report = gate(card, open_session(path, runtime), reference, batch)
        except RegistryError as exc:
            checks.append(Check(name, False, exc.message))
            continue
        checks.append(Check(name, report.ok, report.describe()))
    return checks
