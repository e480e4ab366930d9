"""Model runners: one per model version, runtime request and options, created once per process.

``get_runner`` resolves a reference (``name``, ``name@alias``, ``name@3``) on every call, so a
moved alias takes effect at once, and loads only a version it has not seen: loading goes through
``Registry.load``, which checks the file's sha256 against the card (a tampered file is refused
with ``ModelIntegrityError``), then ``runtime_choice.select_session`` opens it on the runtime
``RunnerOptions.runtime`` asks for (``onnxruntime``, ``openvino`` or ``auto``: the fastest that
passes the parity gate against ONNX Runtime on CPU, measured once here and logged).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models_registry.card import Activation, ModelCard, OutputRole, Runtime
from models_registry.registry import Registry
from models_registry.runtime import (
    CPU_PROVIDER,
    GPU_PROVIDER,
    OrtSession,
    RuntimeOptions,
    Session,
    default_providers,
    run_batched,
)
from service.inference.runtime_choice import (
    AUTO,
    RuntimeRequest,
    Selection,
    reopen,
    select_session,
)

__all__ = [
    "CPU_PROVIDER",
    "GPU_PROVIDER",
    "ModelRunner",
    "RunnerOptions",
    "activate",
    "activate_map",
    "cached_refs",
    "clear_runners",
    "default_providers",
    "get_runner",
    "loaded_selections",
]

logger = logging.getLogger(__name__)

_SESSIONS: dict[tuple[Any, ...], ModelRunner] = {}
_CHOICES: dict[tuple[Any, ...], Selection] = {}  # auto's choice per model version and file
_LOCK = threading.Lock()


@dataclass(frozen=True)
class RunnerOptions:
    """How to run a model; ``intra_op_threads = 0`` lets the runtime choose (one per core).

    ``allow_spinning``: ONNX Runtime's default keeps its threads spinning after each run, which
    on a small machine takes the cores the rest of the request needs; the service turns it off
    (``Settings.ort_spinning``). ``runtime``: ``onnxruntime`` (the default: the reference every
    card's figures were measured on, no gate), another :class:`Runtime` or ``"auto"``; the
    service and ``breastdx predict`` pass ``BREASTDX_RUNTIME``, ``breastdx evaluate`` its
    ``--runtime`` with ``measuring`` (an explicit runtime runs where the card does not allow
    it or it misses the gate, its figures recorded: ``runtime_choice.select_session``).
    """

    intra_op_threads: int = 0
    allow_spinning: bool = True
    fp16: bool = False
    providers: tuple[str, ...] | None = None  # ONNX Runtime; None: default_providers()
    runtime: RuntimeRequest = Runtime.ONNXRUNTIME
    measuring: bool = False  # breastdx evaluate: run an explicit runtime the card does not allow
    concurrent: int = 1  # runs that may overlap (jobs at once): RuntimeOptions.concurrent

    def runtime_options(self) -> RuntimeOptions:
        return RuntimeOptions(
            threads=max(0, self.intra_op_threads),
            spinning=self.allow_spinning,
            providers=self.providers,
            concurrent=self.concurrent,
        )


@dataclass(frozen=True, eq=False)
class ModelRunner:
    """A loaded model: its card, the checked ONNX file and the session its runtime runs."""

    card: ModelCard
    onnx_path: Path
    selection: Selection
    fp16: bool

    @property
    def ref(self) -> str:
        return self.card.ref

    @property
    def session(self) -> Session:
        return self.selection.session

    @property
    def runtime(self) -> Runtime:
        return self.selection.runtime

    @property
    def device(self) -> str:
        return self.selection.device

    @property
    def providers(self) -> list[str]:
        """ONNX Runtime's providers in order; other runtimes: their device."""
        session = self.session
        return list(session.providers) if isinstance(session, OrtSession) else [session.device]

    def run(self, batch: np.ndarray, max_batch: int = 64) -> dict[str, np.ndarray]:
        """``(N, C, H, W)`` float32 -> every carded output by name, ``max_batch`` at a time."""
        names = [o.name for o in self.card.outputs]
        return run_batched(self.session, self.card.input.name, batch, names, max_batch)

    def warm(self) -> None:
        """One zero batch through the model: the runtime's first-run allocations and kernel
        choice happen now, not in the first request."""
        card = self.card
        self.run(np.zeros((1, card.input.channels, *card.input.size), np.float32))  # (1, C, H, W)

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
                return activate_map(outputs[spec.name], spec.activation, temperature)
        return None

    def presence(self, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
        """``(N,)`` lesion-presence probabilities, or None without that output."""
        for spec in self.card.outputs:
            if spec.role is OutputRole.PRESENCE and spec.name in outputs:
                return activate(outputs[spec.name], spec.activation, 1.0).reshape(-1)
        return None

    def mask(self, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
        """``(N, h, w)`` float32 lesion probabilities at the model input size, or None."""
        for spec in self.card.outputs:
            if spec.role is OutputRole.MASK and spec.name in outputs:
                return activate_map(outputs[spec.name], spec.activation, 1.0)
        return None


def activate(
    values: np.ndarray,
    activation: Activation,
    temperature: float = 1.0,
    dtype: type[np.floating[Any]] = np.float64,
) -> np.ndarray:
    """Raw outputs -> probabilities: ``activation(values / temperature)``, computed in
    ``dtype`` (float64 for the per-image scores; :func:`activate_map` for maps)."""
    if activation is Activation.IDENTITY:
        return values.astype(dtype)
    logits = values.astype(dtype) / dtype(temperature)
    if activation is Activation.SIGMOID:
        return 0.5 * (1.0 + np.tanh(0.5 * logits))  # overflow-free logistic
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))  # softmax over classes
    return shifted / shifted.sum(axis=1, keepdims=True)


def activate_map(values: np.ndarray, activation: Activation, temperature: float) -> np.ndarray:
    """An ``(N, 1, h, w)`` map output -> ``(N, h, w)`` float32 probabilities, computed in
    float32: the maps leave as float32 anyway, the values differ from float64's by at most one
    float32 step, and float64 cost 1.4 ms a 192 x 192 map against 0.17 ms on the AVX2-only
    EPYC (the mammography U-Net's two 512 x 512 maps: about 7 ms a request)."""
    return activate(values, activation, temperature, np.float32)[:, 0]


def get_runner(ref: str, registry: Registry, options: RunnerOptions | None = None) -> ModelRunner:
    """The process-wide runner of the version ``ref`` resolves to, created on first use.

    A job pinned to ``name@version`` whose session is open gets it without a store look-up
    (the version was in the store when the job was pinned; sessions outlive retirements until
    the process restarts, as for aliases that move).

    Raises:
        UnknownModelError, UnknownAliasError, UnknownVersionError: ``ref`` names nothing.
        ModelIntegrityError: the ONNX file differs from the one registered.
        RuntimeUnavailableError, RuntimeNotAllowedError, RuntimeParityError, RuntimeLoadError:
            the runtime asked for cannot run this model here (``runtime_choice``).
    """
    options = options or RunnerOptions()
    stores = tuple(store.uri for store in registry.stores)
    name, _, selector = ref.partition("@")
    if selector.isdecimal():  # a pinned version already open needs no store look-up
        with _LOCK:
            runner = _SESSIONS.get((stores, name, int(selector), options))
        if runner is not None:
            return runner
    found = registry.resolve(ref)
    key = (stores, found.name, found.version, options)
    with _LOCK:
        runner = _SESSIONS.get(key)
        if runner is None:
            loaded = registry.load(str(found), fp16=options.fp16)
            selection = _select(loaded.card, loaded.onnx_path, options, key)
            runner = ModelRunner(loaded.card, loaded.onnx_path, selection, options.fp16)
            _SESSIONS[key] = runner
            logger.info(
                "runtime chosen: %s",
                selection.describe(),
                extra={"model": runner.ref, "runtime": runner.runtime.value,
                       "device": runner.device, "fp16": options.fp16},
            )  # fmt: skip
    return runner


def _select(card: ModelCard, path: Path, options: RunnerOptions, key: tuple[Any, ...]) -> Selection:
    """A fresh selection, or auto's earlier choice for this version and file, reopened."""
    choice_key = (*key[:3], options.fp16, options.providers)
    previous = _CHOICES.get(choice_key) if options.runtime == AUTO else None
    if previous is not None:
        return reopen(previous, card, path, options.runtime_options())
    selection = select_session(
        card, path, options.runtime, options.runtime_options(), measuring=options.measuring
    )
    if options.runtime == AUTO:
        _CHOICES[choice_key] = selection
    return selection


def clear_runners() -> None:
    """Drop every cached session and auto choice (tests; a worker that must reload its models)."""
    with _LOCK:
        _SESSIONS.clear()
        _CHOICES.clear()


def cached_refs() -> Sequence[str]:
    """``name@version`` of every session held by this process."""
    with _LOCK:
        return sorted({runner.ref for runner in _SESSIONS.values()})


def loaded_selections() -> dict[str, Selection]:
    """``{name@version: selection}`` of the runners this process holds (the latest per version)."""
    with _LOCK:
        return {runner.ref: runner.selection for runner in _SESSIONS.values()}
