"""Which runtime runs a model in this process: asked for by name, or ``auto``.

- An explicit runtime (``onnxruntime``, ``openvino``, ``openvino-bf16``) must be installed,
  allowed by the card (a reduced-precision one only where the card lists it in
  ``reduced_precision``) and, unless it is ONNX Runtime on CPU itself, pass the parity gate
  against ONNX Runtime on CPU (``models_registry.parity.gate``); otherwise loading fails with
  a typed error (:class:`RuntimeUnavailableError`, :class:`RuntimeNotAllowedError`,
  :class:`RuntimeParityError`): never a silent fallback.
- ``auto`` opens every installed runtime the card allows, drops those that miss the gate (a
  warning names the figures) and, where more than one passes, times those on the gate inputs
  (:data:`WARMUP_RUNS` warm-up runs each, then :data:`TIMED_RUNS` rounds of one run of each,
  interleaved; the median per runtime) and keeps the fastest;
  ONNX Runtime on CPU alone is kept untimed. Runtimes within :data:`AUTO_TIE` of the fastest
  count as tied and the first of them in a fixed order wins (:class:`Runtime`'s: ONNX Runtime on
  CPU, the reference, first, then float32 before reduced precision), so that processes and
  machines whose timings differ by noise make the same choice.

The gate runs on :data:`~models_registry.parity.GATE_IMAGES` inputs made from the card's input
spec through its own preprocessing; the card's tolerance bounds the figures (for a
reduced-precision runtime, the looser bounds its ``reduced_precision`` entry records).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, Literal

import numpy as np

from models_registry.card import ModelCard, Runtime, Task
from models_registry.errors import RuntimeNotAllowedError, RuntimeParityError
from models_registry.parity import (
    Outputs,
    ParityReport,
    gate,
    gate_inputs,
    session_outputs,
)
from models_registry.runtime import (
    CPU_PROVIDER,
    RuntimeOptions,
    Session,
    default_providers,
    installed_runtimes,
    open_session,
)

logger = logging.getLogger(__name__)

AUTO: Final = "auto"
RuntimeRequest = Runtime | Literal["auto"]
RUNTIME_CHOICES: Final = (AUTO, *(r.value for r in Runtime))  # as the CLIs and settings name them
WARMUP_RUNS = 3  # a runtime's first runs after compiling are slower (int8: by up to half)
TIMED_RUNS = 7
# auto: a runtime no more than this much slower than the fastest ties with it; ties go to the
# first in the fixed order of the candidates (docs/deployment.md, "Runtimes")
AUTO_TIE = 0.10


def parse_runtime(value: str) -> RuntimeRequest:
    """``"auto"`` or a :class:`Runtime` value; anything else raises ``ValueError``."""
    return AUTO if value == AUTO else Runtime(value)


@dataclass(frozen=True)
class Trial:
    """One runtime tried for a model: its parity against ONNX Runtime on CPU (None: it is that
    reference) and its median run time on the gate inputs (None: not timed)."""

    runtime: Runtime
    device: str
    parity: ParityReport | None
    model_ms: float | None

    @property
    def passed(self) -> bool:
        return self.parity is None or self.parity.ok

    def describe(self) -> str:
        timing = f"{self.model_ms:.2f} ms" if self.model_ms is not None else "not timed"
        if self.parity is None:
            return f"{self.runtime.value} ({self.device}): reference, {timing}"
        verdict = "passed" if self.parity.ok else "FAILED"
        return (
            f"{self.runtime.value} ({self.device}): parity {verdict} "
            f"(max |prob diff| {self.parity.max_abs_prob_diff:.3g}), {timing}"
        )


@dataclass(frozen=True, eq=False)
class Selection:
    """The session a model runs on, with what was asked for and what was tried."""

    requested: RuntimeRequest
    session: Session
    trials: tuple[Trial, ...]

    @property
    def runtime(self) -> Runtime:
        return self.session.runtime

    @property
    def device(self) -> str:
        return self.session.device

    def describe(self) -> str:
        tried = "; ".join(t.describe() for t in self.trials) or "no gate needed"
        return f"{self.session.label}, requested {self.requested}: {tried}"


def select_session(
    card: ModelCard,
    path: Path,
    requested: RuntimeRequest,
    options: RuntimeOptions,
    *,
    measuring: bool = False,
) -> Selection:
    """Open ``path`` on the runtime ``requested`` names, or on the fastest that passes (auto).

    ``measuring`` (``breastdx evaluate``): an explicit runtime runs even where the card does
    not allow it or it misses the gate; its gate figures are kept in the trials.

    Raises:
        RuntimeUnavailableError: an explicit runtime that is not installed.
        RuntimeNotAllowedError: an explicit runtime the card does not allow.
        RuntimeParityError: an explicit runtime that misses the gate.
        RuntimeLoadError: a runtime refused the file.
    """
    if requested == AUTO:
        return _auto(card, path, options)
    if not card.allows(requested) and not measuring:
        allowed = [r.value for r in Runtime if card.allows(r)]
        raise RuntimeNotAllowedError(card.ref, requested.value, allowed)
    session = open_session(path, requested, options)
    if _is_reference(session):
        return Selection(requested, session, ())
    report = _gated(card, path, session, options, enforce=not measuring)
    return Selection(requested, session, (Trial(session.runtime, session.device, report, None),))


def reopen(previous: Selection, card: ModelCard, path: Path, options: RuntimeOptions) -> Selection:
    """The runtime ``previous`` settled on, opened again with other ``options`` (threads,
    spinning, concurrency): the choice and its timing are not repeated, so a process keeps one
    choice per model version; a session that now keeps a form the choice did not check
    (``Session.forms``) is gated again.

    Raises:
        RuntimeParityError: that form misses the card's tolerance.
    """
    if _is_reference(previous.session) and options.providers is None:
        options = _cpu(options)
    session = open_session(path, previous.runtime, options)
    if len(session.forms()) > len(previous.session.forms()):
        _gated(card, path, session, options)
    return Selection(previous.requested, session, previous.trials)


def _gated(
    card: ModelCard, path: Path, session: Session, options: RuntimeOptions, enforce: bool = True
) -> ParityReport:
    """``session`` (every form of it) against ONNX Runtime on CPU on the gate inputs; with
    ``enforce``, a miss raises :class:`RuntimeParityError`."""
    batch = gate_inputs(card)
    report = gate(card, session, _reference(card, path, batch, options), batch)
    if enforce and not report.ok:
        raise RuntimeParityError(card.ref, session.label, report.describe())
    return report


def _opens_reference(runtime: Runtime, options: RuntimeOptions) -> bool:
    """True when ``runtime`` with ``options`` would be ONNX Runtime on CPU, the reference."""
    providers = options.providers or default_providers()
    return runtime is Runtime.ONNXRUNTIME and providers[0] == CPU_PROVIDER


def _is_reference(session: Session) -> bool:
    return session.runtime is Runtime.ONNXRUNTIME and session.device == CPU_PROVIDER


def _reference(card: ModelCard, path: Path, batch: np.ndarray, options: RuntimeOptions) -> Outputs:
    return session_outputs(open_session(path, Runtime.ONNXRUNTIME, _cpu(options)), card, batch)


def _cpu(options: RuntimeOptions) -> RuntimeOptions:
    """``options`` on ONNX Runtime's CPU provider alone: the gate's reference."""
    return replace(options, providers=(CPU_PROVIDER,))


def _auto(card: ModelCard, path: Path, options: RuntimeOptions) -> Selection:
    batch = gate_inputs(card)
    reference_session = open_session(path, Runtime.ONNXRUNTIME, _cpu(options))
    reference = session_outputs(reference_session, card, batch)
    sessions = [reference_session]
    for runtime in installed_runtimes(reduced_precision=True):
        if card.allows(runtime) and not _opens_reference(runtime, options):
            sessions.append(open_session(path, runtime, options))  # ONNX Runtime on CUDA too
    trials = [Trial(reference_session.runtime, reference_session.device, None, None)]
    passing = [reference_session]
    for session in sessions[1:]:
        parity = gate(card, session, reference, batch)
        trials.append(Trial(session.runtime, session.device, parity, None))
        if parity.ok:
            passing.append(session)
        else:
            logger.warning(
                "runtime failed the parity gate and is not used",
                extra={"model": card.ref, "runtime": session.label, "parity": parity.describe()},
            )
    if len(passing) == 1:  # nothing to choose between: no timing
        return Selection(AUTO, reference_session, tuple(trials))
    timed = batch if card.task is Task.CLASSIFICATION else batch[:1]  # a typical request
    medians = dict(zip(passing, median_ms_each(passing, card, timed), strict=True))
    times = [medians.get(s) for s in sessions]
    trials = [replace(t, model_ms=ms) for t, ms in zip(trials, times, strict=True)]
    return Selection(
        AUTO, _fastest(passing, [times[sessions.index(s)] for s in passing]), tuple(trials)
    )


def _fastest(passing: list[Session], times: list[float | None]) -> Session:
    """The first of ``passing`` (in their fixed order) whose time is within :data:`AUTO_TIE`
    of the fastest's."""
    best = min(t or 0.0 for t in times)
    return next(
        s for s, t in zip(passing, times, strict=True) if (t or 0.0) <= best * (1 + AUTO_TIE)
    )


def median_ms_each(sessions: list[Session], card: ModelCard, batch: np.ndarray) -> list[float]:
    """Each session's median run time on ``batch``, the sessions' runs interleaved (round by
    round, each round in another order): a burst of other work at start-up (another model
    compiling, the machine's neighbours) then slows every candidate alike instead of whichever
    was being timed, which made processes of the same machine choose differently."""
    names, feeds = [o.name for o in card.outputs], {card.input.name: batch}
    for session in sessions:
        for _ in range(WARMUP_RUNS):  # first-run allocations and kernel choice
            session.run(names, feeds)
    times: list[list[float]] = [[] for _ in sessions]
    for round_ in range(TIMED_RUNS):
        shift = round_ % len(sessions)
        for index in [*range(shift, len(sessions)), *range(shift)]:
            start = time.perf_counter()
            sessions[index].run(names, feeds)
            times[index].append((time.perf_counter() - start) * 1000.0)
    return [statistics.median(t) for t in times]
