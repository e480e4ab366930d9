"""Micro-batching: model runs of concurrent requests merged into one call.

A :class:`MicroBatcher` holds one model's pending runs. A thread of its own takes the first,
waits until ``window_ms`` has passed since it arrived or ``max_batch`` rows are pending, and runs
every pending call of the same input shape that fits (in arrival order, a call never split) as
one batch; the rows are then cut back to their calls. A merged run that raises is run again call
by call, so each request gets its own outputs or its own error (a batch too large for the
device's memory, say, fails only where a request alone is too large). A call of ``max_batch``
rows or more runs at once, alone.

When it is on (``BatchPolicy.window_for``): ``window_ms`` set, or unset (``None``) and the
model's session runs on CUDA (``AUTO_WINDOW_MS``). On a CPU the window is off by default: a
batch of N costs about N single runs there, so merging saves nothing and adds the window to
every request (``docs/benchmarks.md``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from service.inference.runner import GPU_PROVIDER, ModelRunner

logger = logging.getLogger(__name__)

AUTO_WINDOW_MS = 5.0
Outputs = dict[str, np.ndarray]
RunFn = Callable[[np.ndarray, int], Outputs]  # ((N, C, H, W) batch, chunk size) -> outputs


@dataclass(frozen=True)
class BatchPolicy:
    """``window_ms``: None picks by device (CUDA: ``AUTO_WINDOW_MS``, else off); 0: off."""

    window_ms: float | None = None
    max_batch: int = 16

    def __post_init__(self) -> None:
        if self.window_ms is not None and not 0.0 <= self.window_ms <= 1000.0:
            raise ValueError(f"window_ms must lie in [0, 1000], got {self.window_ms}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")

    def window_for(self, runner: ModelRunner) -> float:
        """The window in ms for ``runner``'s session; 0 means no batching."""
        if self.window_ms is not None:
            return self.window_ms
        return AUTO_WINDOW_MS if runner.providers[:1] == [GPU_PROVIDER] else 0.0


@dataclass(frozen=True)
class Batched:
    """What one call got: its outputs and how many calls, images and rows ran together."""

    outputs: Outputs
    calls: int = 1
    images: int = 1
    rows: int = 1


@dataclass(eq=False)
class _Call:
    batch: np.ndarray  # (n, C, H, W)
    images: int
    arrived: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: Batched | None = None
    error: BaseException | None = None

    @property
    def rows(self) -> int:
        return len(self.batch)

    @property
    def shape(self) -> tuple[tuple[int, ...], np.dtype]:
        return self.batch.shape[1:], self.batch.dtype


class MicroBatcher:
    """Merges concurrent ``run`` calls of one model (see the module docstring).

    ``sizes`` counts the merged model calls by rows, for tests and the benchmark.
    """

    def __init__(self, run: RunFn, window_ms: float, max_batch: int, name: str = "model") -> None:
        self._run, self.window_s, self.max_batch = run, window_ms / 1000.0, max_batch
        self._pending: list[_Call] = []
        self._cond = threading.Condition()
        self._closed = False
        self.sizes: Counter[int] = Counter()
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def run(self, batch: np.ndarray, images: int = 1) -> Batched:
        """``(n, C, H, W)`` -> this call's outputs (rows in order); raises this call's error."""
        if len(batch) >= self.max_batch:
            return self._direct(batch, images)
        call = _Call(batch, images)
        with self._cond:
            closed = self._closed
            if not closed:
                self._pending.append(call)
                self._cond.notify_all()
        if closed:
            return self._direct(batch, images)
        call.done.wait()
        if call.error is not None:
            raise call.error
        if call.result is None:  # pragma: no cover - _deliver sets one of the two
            raise RuntimeError("a batched call ended without a result")
        return call.result

    def close(self) -> None:
        """Stop the thread once the pending calls are served."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _direct(self, batch: np.ndarray, images: int) -> Batched:
        outputs = self._run(batch, self.max_batch)
        with self._cond:
            self.sizes[len(batch)] += 1
        return Batched(outputs, 1, images, len(batch))

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return  # closed and drained
                deadline = self._pending[0].arrived + self.window_s
                while not self._closed and self._rows() < self.max_batch:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                calls = self._take()
            self._serve(calls)

    def _rows(self) -> int:
        first = self._pending[0].shape
        return sum(c.rows for c in self._pending if c.shape == first)

    def _take(self) -> list[_Call]:
        """The first pending call and every later one of its shape that still fits."""
        first, taken, rows = self._pending[0], [], 0
        for call in self._pending:
            if call.shape == first.shape and rows + call.rows <= self.max_batch:
                taken.append(call)
                rows += call.rows
        self._pending = [c for c in self._pending if c not in taken]
        return taken

    def _serve(self, calls: list[_Call]) -> None:
        try:
            merged = calls[0].batch if len(calls) == 1 else np.concatenate([c.batch for c in calls])
            outputs = self._run(merged, self.max_batch)
        except Exception as exc:
            if len(calls) == 1:
                self._deliver(calls[0], error=exc)
                return
            logger.warning("merged run of %d calls failed; running each alone", len(calls))
            for call in calls:
                self._serve([call])
            return
        with self._cond:
            self.sizes[len(merged)] += 1
        images = sum(c.images for c in calls)
        begin = 0
        for call in calls:
            part = {name: value[begin : begin + call.rows] for name, value in outputs.items()}
            begin += call.rows
            self._deliver(call, Batched(part, len(calls), images, len(merged)))

    @staticmethod
    def _deliver(
        call: _Call, result: Batched | None = None, error: BaseException | None = None
    ) -> None:
        call.result, call.error = result, error
        call.done.set()


_BATCHERS: dict[int, tuple[ModelRunner, MicroBatcher]] = {}
_LOCK = threading.Lock()


def run_model(
    runner: ModelRunner,
    batch: np.ndarray,
    max_batch: int,
    policy: BatchPolicy | None = None,
    images: int = 1,
) -> Batched:
    """``runner.run(batch)``, through the runner's process-wide batcher where ``policy`` turns
    batching on for it; ``images``: how many images the rows of ``batch`` come from."""
    window_ms = policy.window_for(runner) if policy is not None else 0.0
    if policy is None or window_ms <= 0:
        return Batched(runner.run(batch, max_batch), 1, images, len(batch))
    return batcher_for(runner, window_ms, policy.max_batch).run(batch, images)


def batcher_for(runner: ModelRunner, window_ms: float, max_batch: int) -> MicroBatcher:
    """The batcher of ``runner`` with these settings, made on first use."""
    key = id(runner)
    with _LOCK:
        entry = _BATCHERS.get(key)
        stale = entry is not None and (
            entry[0] is not runner
            or entry[1].window_s != window_ms / 1000.0
            or entry[1].max_batch != max_batch
        )
        if entry is None or stale:
            if entry is not None:
                entry[1].close()
            entry = (runner, MicroBatcher(runner.run, window_ms, max_batch, runner.ref))
            _BATCHERS[key] = entry
            logger.info(
                "micro-batching on",
                extra={"model": runner.ref, "window_ms": window_ms, "max_batch": max_batch},
            )
        return entry[1]


def batchers() -> dict[str, MicroBatcher]:
    """The live batchers by model reference (``name@version``)."""
    with _LOCK:
        return {runner.ref: batcher for runner, batcher in _BATCHERS.values()}


def clear_batchers() -> None:
    """Stop every batcher (tests; with ``runner.clear_runners``)."""
    with _LOCK:
        entries = list(_BATCHERS.values())
        _BATCHERS.clear()
    for _, batcher in entries:
        batcher.close()
