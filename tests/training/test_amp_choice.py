"""``amp: auto``: bf16 autocast on a CPU only where a few timed training steps say it is faster."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.training.test_trainer import make_config, make_data, unet, updated
from training import amp_choice
from training.amp_choice import AmpTiming, bf16_is_faster
from training.checkpoint import load_checkpoint
from training.models import build_model
from training.trainer import train


def test_the_faster_setting_is_chosen_and_the_model_is_left_alone() -> None:
    torch.manual_seed(0)
    model = build_model("unet", in_channels=1, width=4, input_size=32, depth=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    timing = bf16_is_faster(model, (4, 1, 32, 32), channels_last=True, steps=2)
    assert timing.float32_s > 0 and timing.bf16_s > 0
    assert timing.bf16 is (timing.bf16_s < timing.float32_s)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())  # the run's random draws are not moved
    assert AmpTiming(float32_s=0.2, bf16_s=0.1).bf16 and not AmpTiming(0.1, 0.2).bf16
    assert AmpTiming(0.2, 0.1).describe() == (
        "bf16 autocast (a training step: float32 200 ms, bf16 autocast 100 ms)"
    )


def _auto_run(out: Path, caplog: pytest.LogCaptureFixture) -> tuple[str, dict[str, Any]]:
    """A run with ``amp: auto``: its one ``amp: auto chose`` log line and its last checkpoint."""
    config = updated(make_config(out), amp="auto", channels_last=True, threads=1)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="training.trainer"):
        train(config, data=make_data(config), model=unet(config))
    (line,) = [r.getMessage() for r in caplog.records if "amp: auto chose" in r.getMessage()]
    state = load_checkpoint(out / "last.pt")
    assert state["config"]["amp"] == "auto"
    return line, state


def test_a_run_with_amp_auto_on_a_cpu_with_bf16_units_trains_with_the_measured_choice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(amp_choice, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    line, state = _auto_run(tmp_path, caplog)
    chose_bf16 = line.startswith("amp: auto chose bf16")
    assert f"amp={chose_bf16}" in state["hardware"]  # the card says what the run used
    assert re.fullmatch(
        r"amp: auto chose (bf16 autocast|float32) \(a training step: float32 \d+ ms, bf16 "
        r"autocast \d+ ms\)",
        line,
    )


def test_a_cpu_without_bf16_units_trains_float32_without_timing_bf16(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Emulated bf16 took 23 s a step against float32's 2.2 on the AVX2-only EPYC: not timed."""

    def timed(*args: Any, **kwargs: Any) -> AmpTiming:
        raise AssertionError("bf16 was timed on a CPU without bf16 units")

    monkeypatch.setattr(amp_choice, "cpu_flags", lambda: frozenset({"avx", "avx2", "fma"}))
    monkeypatch.setattr(amp_choice, "bf16_is_faster", timed)
    line, state = _auto_run(tmp_path, caplog)
    assert (
        line.startswith("amp: auto chose float32 (no bf16 units")
        and "amp=False" in state["hardware"]
    )


def test_this_cpus_flags_are_read_and_unknown_flags_time_as_before(tmp_path: Path) -> None:
    flags = amp_choice.cpu_flags()
    assert flags is None or "fpu" in flags  # x86 Linux lists its flags; elsewhere unknown
    assert amp_choice.cpu_flags(tmp_path / "absent") is None
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n")
    assert amp_choice.cpu_flags(tmp_path / "cpuinfo") == {"fpu", "avx2", "amx_bf16"}
