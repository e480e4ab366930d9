"""``amp: auto``: bf16 autocast on a CPU only where a few timed training steps say it is faster."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch

from tests.training.test_trainer import make_config, make_data, unet, updated
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


def test_a_run_with_amp_auto_trains_with_the_measured_choice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = updated(make_config(tmp_path), amp="auto", channels_last=True, threads=1)
    with caplog.at_level(logging.INFO, logger="training.trainer"):
        train(config, data=make_data(config), model=unet(config))
    (line,) = [r.getMessage() for r in caplog.records if "amp: auto chose" in r.getMessage()]
    chose_bf16 = line.startswith("amp: auto chose bf16")
    state = load_checkpoint(tmp_path / "last.pt")
    assert f"amp={chose_bf16}" in state["hardware"]  # the card says what the run used
    assert state["config"]["amp"] == "auto"
    assert re.fullmatch(
        r"amp: auto chose (bf16 autocast|float32) \(a training step: float32 \d+ ms, bf16 "
        r"autocast \d+ ms\)",
        line,
    )
