"""ONNX Runtime sessions: one per model version and options, created once per process.

``get_runner`` resolves a reference (``name``, ``name@alias``, ``name@3``) on every call, so a
moved alias takes effect at once, and creates the session only for a version it has not seen:
loading goes through ``Registry.load``, which checks the file's sha256 against the card (a
tampered file is refused with ``ModelIntegrityError``). Providers: ``CUDAExecutionProvider``
where ONNX Runtime offers it (the ``onnxruntime-gpu`` build), then ``CPUExecutionProvider``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from models_registry.card import Activation, ModelCard, OutputRole
from models_registry.registry import Registry

logger = logging.getLogger(__name__)

GPU_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"

_SESSIONS: dict[tuple[Any, ...], ModelRunner] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class RunnerOptions:
    """Session options; ``intra_op_threads = 0`` lets ONNX Runtime choose (one per core).

    ``allow_spinning``: ONNX Runtime's default keeps its threads spinning after each run, which
    on a small machine takes the cores the rest of the request needs; the service turns it off
    (``Settings.ort_spinning``).
    """

    intra_op_threads: int = 0
    allow_spinning: bool = True
    fp16: bool = False
    providers: tuple[str, ...] | None = None  # None: default_providers()


def default_providers() -> tuple[str, ...]:
    """CUDA first where this ONNX Runtime build offers it, then CPU."""
    available = ort.get_available_providers()
    return tuple(p for p in (GPU_PROVIDER, CPU_PROVIDER) if p in available)


@dataclass(frozen=True, eq=False)
class ModelRunner:
    """A loaded model: its card, the checked ONNX file and one ONNX Runtime session."""

    card: ModelCard
    onnx_path: Path
    session: ort.InferenceSession
    fp16: bool

    @property
    def ref(self) -> str:
        return self.card.ref

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def run(self, batch: np.ndarray, max_batch: int = 64) -> dict[str, np.ndarray]:
        """``(N, C, H, W)`` float32 -> every carded output by name, ``max_batch`` at a time."""
        names = [o.name for o in self.card.outputs]
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for begin in range(0, len(batch), max(1, max_batch)):
            chunk = np.ascontiguousarray(batch[begin : begin + max_batch], dtype=np.float32)
            values = self.session.run(names, {self.card.input.name: chunk})
            for name, value in zip(names, values, strict=True):
                parts[name].append(np.asarray(value, dtype=np.float32))
        return {name: np.concatenate(values) for name, values in parts.items() if values}

    def malignancy(self, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
        """Calibrated ``(N,)`` malignancy probabilities: the malignancy output, else the last
        class of the class logits, each divided by the card's temperature before activation."""
        temperature = self.card.calibration.temperature
        for spec in self.card.outputs:
            if spec.name not in outputs:
                continue
            if spec.role is OutputRole.MALIGNANCY:
                return activate(outputs[spec.name], spec.activation, temperature).reshape(-1)
            if spec.role is OutputRole.CLASS_LOGITS:
                return activate(outputs[spec.name], spec.activation, temperature)[:, -1]
        return None

    def lesion_malignancy(self, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
        """``(N, h, w)`` float32 per-pixel malignancy probabilities (calibrated with the card's
        ``lesion_temperature``) at the model input size, or None without that output."""
        temperature = self.card.calibration.lesion_temperature
        for spec in self.card.outputs:
            if spec.role is OutputRole.LESION_MALIGNANCY and spec.name in outputs:
                probs = activate(outputs[spec.name], spec.activation, temperature)
                return probs[:, 0].astype(np.float32)  # (N, h, w)
        return None

    def mask(self, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
        """``(N, h, w)`` float32 lesion probabilities at the model input size, or None."""
        for spec in self.card.outputs:
            if spec.role is OutputRole.MASK and spec.name in outputs:
                probs = activate(outputs[spec.name], spec.activation, 1.0)  # (N, 1, h, w)
                return probs[:, 0].astype(np.float32)
        return None


def activate(values: np.ndarray, activation: Activation, temperature: float = 1.0) -> np.ndarray:
    """Raw outputs -> probabilities (float64): ``activation(values / temperature)``."""
    if activation is Activation.IDENTITY:
        return values.astype(np.float64)
    logits = values.astype(np.float64) / temperature
    if activation is Activation.SIGMOID:
        return 0.5 * (1.0 + np.tanh(0.5 * logits))  # overflow-free logistic
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))  # softmax over classes
    return shifted / shifted.sum(axis=1, keepdims=True)


def _session(path: Path, options: RunnerOptions) -> ort.InferenceSession:
    settings = ort.SessionOptions()
    settings.intra_op_num_threads = max(0, options.intra_op_threads)
    settings.log_severity_level = 3
    if not options.allow_spinning:
        settings.add_session_config_entry("session.intra_op.allow_spinning", "0")
        settings.add_session_config_entry("session.inter_op.allow_spinning", "0")
    providers = list(options.providers or default_providers())
    return ort.InferenceSession(str(path), settings, providers=providers)


def get_runner(ref: str, registry: Registry, options: RunnerOptions | None = None) -> ModelRunner:
    """The process-wide runner of the version ``ref`` resolves to, created on first use.

    Raises:
        UnknownModelError, UnknownAliasError, UnknownVersionError: ``ref`` names nothing.
        ModelIntegrityError: the ONNX file differs from the one registered.
    """
    options = options or RunnerOptions()
    found = registry.resolve(ref)
    stores = tuple(store.uri for store in registry.stores)
    key = (stores, found.name, found.version, options)
    with _LOCK:
        runner = _SESSIONS.get(key)
        if runner is None:
            loaded = registry.load(str(found), fp16=options.fp16)
            runner = ModelRunner(
                loaded.card, loaded.onnx_path, _session(loaded.onnx_path, options), options.fp16
            )
            _SESSIONS[key] = runner
            logger.info(
                "session created",
                extra={"model": runner.ref, "providers": runner.providers, "fp16": options.fp16},
            )
    return runner


def clear_runners() -> None:
    """Drop every cached session (tests; a worker that must reload its models)."""
    with _LOCK:
        _SESSIONS.clear()


def cached_refs() -> Sequence[str]:
    """``name@version`` of every session held by this process."""
    with _LOCK:
        return sorted({runner.ref for runner in _SESSIONS.values()})
