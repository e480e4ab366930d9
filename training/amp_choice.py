"""``amp: auto`` on a CPU: bf16 autocast only where it trains faster here, measured at start.

bf16 autocast is 2.9x faster than float32 for the U-Net on an Intel Xeon with AMX, and slower
than float32 + channels-last on one with AVX512-BF16 but no AMX (``docs/benchmarks.md``, "CPU
training speed"), so no fixed setting suits every machine a ship config may train on.
``bf16_is_faster`` times a few training steps (forward, backward, an optimiser step) of a copy
of the model on a random batch of the run's shape, with and without autocast, in the run's
memory format and threads, and says which was faster. The model, its optimiser and every random
generator of the run are left untouched (a copy, and a private generator for the batch). Where
Linux's CPU flags name no bf16 unit (``avx512_bf16``, ``amx_bf16``) nothing is timed: bf16 is
emulated there (on the AVX2-only AMD EPYC a U-Net step took 23 s against 2.2 in float32).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

STEPS = 3  # timed steps per setting, after one warm-up step
# Linux's names of the units that compute bf16 (without them torch emulates it, about 10-25x
# slower than float32 on an AVX2-only CPU: docs/benchmarks.md)
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The CPU's feature flags as Linux lists them; None where they are unknown (no such file)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return None


def lacks_bf16_units() -> bool:
    """True where the CPU's flags are known and name no bf16 unit: bf16 autocast would be
    emulated there, so ``amp: auto`` need not time it (a few such steps took 1.5 minutes)."""
    flags = cpu_flags()
    return flags is not None and not flags & BF16_FLAGS


@dataclass(frozen=True)
class AmpTiming:
    """Seconds per training step without and with bf16 autocast; the faster one's flag."""

    float32_s: float
    bf16_s: float

    @property
    def bf16(self) -> bool:
        return self.bf16_s < self.float32_s

    def describe(self) -> str:
        chosen = "bf16 autocast" if self.bf16 else "float32"
        return (
            f"{chosen} (a training step: float32 {1000 * self.float32_s:.0f} ms, bf16 autocast "
            f"{1000 * self.bf16_s:.0f} ms)"
        )


def _loss(outputs: dict[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
    values = outputs.values() if isinstance(outputs, dict) else [outputs]
    return torch.stack([v.float().mean() for v in values]).sum()


def bf16_is_faster(
    model: nn.Module, input_shape: tuple[int, ...], *, channels_last: bool, steps: int = STEPS
) -> AmpTiming:
    """Time ``steps`` training steps of a copy of ``model`` on a random ``input_shape`` batch
    (``(N, C, H, W)``), float32 and bf16 autocast, each after a warm-up step."""
    trial = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(trial.parameters(), lr=0.0)
    batch = torch.rand(input_shape, generator=torch.Generator().manual_seed(0))
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)

    def step(amp: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            outputs = trial(batch)
        optimizer.zero_grad()
        _loss(outputs).backward()
        optimizer.step()

    seconds = {}
    with torch.random.fork_rng(devices=[]):  # dropout draws leave the run's generator alone
        for amp in (False, True):
            step(amp)
            start = time.perf_counter()
            for _ in range(steps):
                step(amp)
            seconds[amp] = (time.perf_counter() - start) / steps
    return AmpTiming(float32_s=seconds[False], bf16_s=seconds[True])
