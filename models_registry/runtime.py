"""Inference runtimes behind one interface: an ONNX file, named inputs in, named outputs out.

- ``onnxruntime``: ONNX Runtime with ``CUDAExecutionProvider`` where the installed build offers
  it (``onnxruntime-gpu``), then ``CPUExecutionProvider``.
- ``openvino``: OpenVINO's CPU plugin (PyPI ``openvino``) with ``INFERENCE_PRECISION_HINT f32``
  and ``PERFORMANCE_HINT LATENCY``; where runs may overlap (``RuntimeOptions.concurrent``) a
  second compiled form with ``PERFORMANCE_HINT THROUGHPUT`` (a stream per overlapping run) serves
  the runs that start beside other work (:class:`OpenVinoSession`). On CPUs with bf16 units
  OpenVINO's default precision is bfloat16, which moved the shipped models' probabilities by up
  to 1e-2 (docs/deployment.md, "Runtimes"); float32 keeps them within 1e-6 of ONNX Runtime.
- ``openvino-bf16``: the same at ``INFERENCE_PRECISION_HINT bf16`` (reduced precision: a card
  allows it only with its evaluated figures, ``ModelCard.reduced_precision``). On a CPU without
  bf16 units OpenVINO would compute in float32 under that name, so there it is unavailable
  (:func:`unavailable`): ``auto`` leaves it out and a request for it is refused.

Both runtimes are imported lazily: a process pays only for the ones it opens. A runtime that is
not installed raises :class:`RuntimeUnavailableError`.
"""

from __future__ import annotations

import importlib
import os
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from models_registry.card import INT8_FILE, Runtime
from models_registry.errors import (
    RuntimeLoadError,
    RuntimeUnavailableError,
    RuntimeUnsupportedError,
)

GPU_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
OPENVINO_DEVICE = "CPU"
OPENVINO_CONFIG: Mapping[str, str] = {
    "INFERENCE_PRECISION_HINT": "f32",
    "PERFORMANCE_HINT": "LATENCY",
}
# int8: the quantised layers run in int8 whatever the hint; the rest stays float32
OPENVINO_PRECISION: Mapping[Runtime, str] = {
    Runtime.OPENVINO: "f32",
    Runtime.OPENVINO_BF16: "bf16",
    Runtime.OPENVINO_INT8: "f32",
}
_MODULES = {runtime: runtime.engine.value for runtime in Runtime}


@dataclass(frozen=True)
class RuntimeOptions:
    """How to open a session.

    Attributes:
        threads: intra-op threads; 0 lets the runtime choose (one per core).
        spinning: ONNX Runtime's threads spin-wait after each run (its default); off, they
            leave the cores to the rest of the request. OpenVINO's CPU threads do not spin.
        providers: ONNX Runtime providers in order; None: :func:`default_providers`.
        concurrent: how many runs may overlap (the jobs a process runs at once); above 1
            OpenVINO keeps a second form of the model, one stream per overlapping run, for the
            runs that start while other request work is under way.
    """

    threads: int = 0
    spinning: bool = True
    providers: tuple[str, ...] | None = None
    concurrent: int = 1


CPU_ONLY = RuntimeOptions(providers=(CPU_PROVIDER,))


class Session(ABC):
    """One loaded ONNX file in one runtime; ``run`` may be called from several threads."""

    runtime: Runtime
    device: str  # e.g. "CUDAExecutionProvider", "CPUExecutionProvider", "CPU"
    path: Path  # the file it runs (an int8 runtime: the model's int8 sibling)

    @abstractmethod
    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs ``names`` (float32 arrays, in that order) for the inputs ``feeds``."""

    @property
    def label(self) -> str:
        """``runtime (device)``, as logs and reports name it."""
        return f"{self.runtime.value} ({self.device})"

    def forms(self) -> tuple[Session, ...]:
        """Every form of the model that :meth:`run` may use, each as a session of its own: the
        parity gate checks them all (one, unless the runtime keeps several)."""
        return (self,)


@cache
def _module(runtime: Runtime) -> Any:
    try:
        return importlib.import_module(_MODULES[runtime])
    except ImportError as exc:
        raise RuntimeUnavailableError(runtime.value, str(exc)) from exc


def installed(runtime: Runtime) -> bool:
    """True when ``runtime``'s Python package imports in this environment and this CPU computes
    its precision (:func:`unavailable`)."""
    return unavailable(runtime) is None


def unavailable(runtime: Runtime) -> str | None:
    """Why ``runtime`` cannot run here (its package does not import; ``openvino-bf16``: a CPU
    without bf16 units, where OpenVINO would silently compute float32); None where it can."""
    try:
        _module(runtime)
    except RuntimeUnavailableError:
        return f"its Python package {_MODULES[runtime]!r} does not import"
    return _unsupported(runtime)


def _unsupported(runtime: Runtime) -> str | None:
    """Why this CPU does not compute ``runtime``'s precision (its package imports); None: it can."""
    if runtime is Runtime.OPENVINO_BF16 and "BF16" not in openvino_capabilities():
        return (
            "OpenVINO's CPU plugin computes " + ", ".join(sorted(openvino_capabilities()))
            + " here, not BF16 (the CPU has no AVX512-BF16 or AMX units), so it would run "
            "float32 under the bf16 name"
        )  # fmt: skip
    return None


def require(runtime: Runtime) -> None:
    """Nothing where ``runtime`` can run here; else its typed error.

    Raises:
        RuntimeUnavailableError: its package does not import.
        RuntimeUnsupportedError: this CPU does not compute its precision.
    """
    _module(runtime)
    reason = _unsupported(runtime)
    if reason is not None:
        raise RuntimeUnsupportedError(runtime.value, reason)


@cache
def openvino_capabilities() -> frozenset[str]:
    """What OpenVINO's CPU plugin computes on this CPU (``OPTIMIZATION_CAPABILITIES``: FP32,
    INT8, and BF16 only where the CPU has bf16 units)."""
    names = _openvino_core().get_property(OPENVINO_DEVICE, "OPTIMIZATION_CAPABILITIES")
    return frozenset(str(name) for name in names)


def installed_runtimes(*, reduced_precision: bool = False) -> tuple[Runtime, ...]:
    """The float32 runtimes this environment can open, ONNX Runtime first; with
    ``reduced_precision`` the reduced-precision ones this CPU computes too."""
    return tuple(
        r for r in Runtime if (reduced_precision or not r.reduced_precision) and installed(r)
    )


def runtime_version(runtime: Runtime) -> str:
    """The installed version of ``runtime``'s package."""
    module = _module(runtime)
    onnxruntime = runtime.engine is Runtime.ONNXRUNTIME
    return str(module.__version__ if onnxruntime else module.get_version())


def default_providers() -> tuple[str, ...]:
    """CUDA first where this ONNX Runtime build offers it, then CPU."""
    available = _module(Runtime.ONNXRUNTIME).get_available_providers()
    return tuple(p for p in (GPU_PROVIDER, CPU_PROVIDER) if p in available)


class OrtSession(Session):
    """ONNX Runtime; ``session`` is the ``onnxruntime.InferenceSession``."""

    def __init__(
        self, path: Path, options: RuntimeOptions, runtime: Runtime = Runtime.ONNXRUNTIME
    ) -> None:
        self.runtime, self.path = runtime, path
        ort = _module(Runtime.ONNXRUNTIME)
        settings = ort.SessionOptions()
        settings.intra_op_num_threads = max(0, options.threads)
        settings.log_severity_level = 3
        if not options.spinning:
            settings.add_session_config_entry("session.intra_op.allow_spinning", "0")
            settings.add_session_config_entry("session.inter_op.allow_spinning", "0")
        providers = list(options.providers or default_providers())
        try:
            self.session = ort.InferenceSession(str(path), settings, providers=providers)
        except Exception as exc:  # onnxruntime raises several unrelated exception types
            raise RuntimeLoadError(self.runtime.value, path.name, _first_line(exc)) from exc
        self.providers = tuple(self.session.get_providers())
        self.device = self.providers[0]

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        values = self.session.run(list(names), dict(feeds))
        return [np.asarray(v, dtype=np.float32) for v in values]


class Work:
    """The threads of this process that are working on a request now (``with WORK.held():``
    around an analysis or a job's attempt; a thread inside several counts once). A runtime with
    several forms reads it to tell a run alone from runs that compete for the cores."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()
        self._threads = 0

    def threads(self) -> int:
        return self._threads

    @contextmanager
    def held(self) -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        self._local.depth = depth + 1
        if depth == 0:
            with self._lock:
                self._threads += 1
        try:
            yield
        finally:
            self._local.depth = depth
            if depth == 0:
                with self._lock:
                    self._threads -= 1


WORK = Work()


class OpenVinoSession(Session):
    """OpenVINO on CPU; ``runtime`` names its precision (``openvino``: f32, ``openvino-bf16``:
    bf16, ``openvino-int8``: the int8 file).

    One compiled model with ``PERFORMANCE_HINT LATENCY`` (one stream, every core for each run)
    and a pool of infer requests (one per concurrent run). Where runs may overlap
    (``options.concurrent`` above 1, more than one core, no fixed single thread) a second form is
    compiled with ``PERFORMANCE_HINT THROUGHPUT`` and one stream per overlapping run (at most one
    per core), the cores shared out between the streams (on 2 cores: one core per run): a run that
    starts while another run of this model is in flight, or while another thread of the process
    is working on a request (:data:`WORK`: decoding, post-processing, another model), takes it,
    so the process's work shares the cores rather than each run asking for all of them; a run
    alone keeps the latency form. The two forms give the same outputs (measured bit-identical
    on the shipped models; the parity gate checks both, :meth:`forms`). Measured on 2 cores,
    the pipeline two at a time: histopathology about 1.15x and ultrasound about 1.13x the
    requests/s of the latency form alone (docs/benchmarks.md).
    """

    device = OPENVINO_DEVICE

    def __init__(
        self, path: Path, options: RuntimeOptions, runtime: Runtime = Runtime.OPENVINO
    ) -> None:
        self.runtime, self.path = runtime, path
        config = {**OPENVINO_CONFIG, "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[runtime]}
        if options.threads > 0:
            config["INFERENCE_NUM_THREADS"] = str(options.threads)
        self._latency = _OpenVinoForm(self._compile(path, config))
        streams = min(options.concurrent, _cores())
        spread = {**config, "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": str(streams)}
        self._spread = (
            _OpenVinoForm(self._compile(path, spread))
            if streams > 1 and options.threads != 1
            else None
        )
        self._lock = threading.Lock()
        self._running = 0

    @property
    def compiled(self) -> Any:
        """The latency form's compiled model."""
        return self._latency.compiled

    @property
    def spread(self) -> bool:
        """True when a second form serves the runs that overlap another."""
        return self._spread is not None

    def _compile(self, path: Path, config: Mapping[str, str]) -> Any:
        core = _openvino_core()  # RuntimeUnavailableError where OpenVINO does not import
        try:
            return core.compile_model(str(path), OPENVINO_DEVICE, dict(config))
        except Exception as exc:  # OpenVINO raises RuntimeError and its own types
            raise RuntimeLoadError(self.runtime.value, path.name, _first_line(exc)) from exc

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            alone = self._running == 0 and WORK.threads() <= 1
            form = self._latency if alone or self._spread is None else self._spread
            self._running += 1
        try:
            return form.infer(names, feeds)
        finally:
            with self._lock:
                self._running -= 1

    def forms(self) -> tuple[Session, ...]:
        return tuple(
            _FormSession(self, form) for form in (self._latency, self._spread) if form is not None
        )


class _OpenVinoForm:
    """One compiled model and its idle infer requests (a request serves one run at a time)."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        # every name of each output: an output that another node also reads (a head fed by the
        # mask logits) may carry more than one, and any_name need not be the graph's output name
        self._outputs = {name: port for port in compiled.outputs for name in port.get_names()}
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def infer(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            results = request.infer(dict(feeds))
            # copies: the request's buffers are reused by its next run
            return [np.array(results[self._outputs[n]], dtype=np.float32) for n in names]
        finally:
            self._idle.put(request)


class _FormSession(Session):
    """One form of an :class:`OpenVinoSession`, always that one (what the parity gate runs)."""

    device = OPENVINO_DEVICE

    def __init__(self, owner: OpenVinoSession, form: _OpenVinoForm) -> None:
        self.runtime, self.path, self._form = owner.runtime, owner.path, form

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self._form.infer(names, feeds)


def _cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_CORE_LOCK = threading.Lock()


@cache
def _openvino_core() -> Any:
    with _CORE_LOCK:
        return _module(Runtime.OPENVINO).Core()


def open_session(
    path: Path, runtime: Runtime = Runtime.ONNXRUNTIME, options: RuntimeOptions | None = None
) -> Session:
    """Load ``path`` in ``runtime``.

    Raises:
        RuntimeUnavailableError: the runtime's package is not installed.
        RuntimeUnsupportedError: this CPU does not compute the runtime's precision.
        RuntimeLoadError: the runtime refused the file.
    """
    options = options or RuntimeOptions()
    require(runtime)
    path = artifact_path(Path(path), runtime)
    if runtime.engine is Runtime.ONNXRUNTIME:
        return OrtSession(path, options, runtime)
    return OpenVinoSession(path, options, runtime)


def artifact_path(path: Path, runtime: Runtime) -> Path:
    """The file ``runtime`` runs for the model whose main file is ``path``: its int8 sibling
    (:data:`INT8_FILE`, written by ``breastdx quantize``) for an int8 runtime, else ``path``."""
    return path.with_name(INT8_FILE) if runtime.int8 else path


def run_batched(
    session: Session,
    input_name: str,
    batch: np.ndarray,
    names: Sequence[str],
    chunk: int = 16,
) -> dict[str, np.ndarray]:
    """``(N, ...)`` inputs -> every output in ``names`` over the batch, ``chunk`` at a time."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for begin in range(0, len(batch), max(1, chunk)):
        part = np.ascontiguousarray(batch[begin : begin + chunk], dtype=np.float32)
        for name, value in zip(names, session.run(names, {input_name: part}), strict=True):
            parts[name].append(value)
    return {name: np.concatenate(values) for name, values in parts.items() if values}


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
