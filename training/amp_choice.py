"""``amp: auto`` on a CPU: bf16 autocast only where it trains faster here, measured at start.

bf16 autocast is 2.9x faster than float32 for the U-Net on an Intel Xeon with AMX, and slower
than float32 + channels-last on one with AVX512-BF16 but no AMX (``docs/benchmarks.md``, "CPU
training speed"), so no fixed setting suits every machine a ship config may train on.
``bf16_is_faster`` times a few training steps (forward, backward, an optimiser step) of a copy
of the model on a random batch of the run's shape, with and without autocast, in the run's
memory format and threads, and says which was faster. The model, its optimiser and every random
generator of the run are left untouched (a copy, and a private generator for the batch).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import nn

STEPS = 3  # timed steps per setting, after one warm-up step


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
