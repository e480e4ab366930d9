"""Training throughput (images/s) per model: forward + backward + AdamW step on random data.

    .venv/bin/python bench/bench_training.py [--device cpu|cuda] [--steps 5] [--models unet ...]
        [--size 160 --batch 16 --width 16] [--variants fp32 bf16 bf16-cl] [--threads 2]
        [--option stem=small ...]

Prints one row per model and variant with the input size and batch used, the median step time and
images/s. Sizes default to the grid's ``cpu`` scale on CPU and its ``full`` scale on CUDA.
Variants: ``fp32``; ``bf16`` (autocast: bfloat16 on CPU, float16 on CUDA); ``-cl`` adds the
channels-last memory format. Variants run interleaved, so a noisy machine hurts each alike.
``--option KEY=VALUE`` sets a model option (``model.options``) on the models that have it, e.g.
``stem=small`` on the ResNets (each such model is then timed with and without it).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Any

import torch
import yaml

from training.models import MODELS as MODELS_BY_NAME
from training.models import build_model

# (model, in_channels, task, width) -- the paper's seven networks, the CPU-scale DeepLab and
# the ResNet18 the histopathology stage ships.
MODELS = [
    ("unet", 1, "seg", 16),
    ("resunetpp", 1, "seg", 8),
    ("deeplabv3_mobilenet", 1, "seg", None),
    ("deeplabv3", 1, "seg", None),
    ("vgg19", 3, "cls", None),
    ("resnet18", 3, "cls", None),
    ("resnet50", 3, "cls", None),
    ("densenet121", 3, "cls", None),
    ("efficientnet_v2_s", 3, "cls", None),
]
VARIANTS = ("fp32", "fp32-cl", "bf16", "bf16-cl")
SIZES = {"cpu": {"seg": (64, 16), "cls": (48, 64)}, "cuda": {"seg": (256, 16), "cls": (64, 256)}}


def _step_time(
    name: str,
    channels: int,
    task: str,
    width: int | None,
    size: int,
    batch: int,
    steps: int,
    device: torch.device,
    variant: str = "fp32",
    options: dict[str, Any] | None = None,
) -> float:
    model = build_model(
        name, in_channels=channels, width=width, input_size=size, **(options or {})
    ).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(batch, channels, size, size, device=device)  # (B, C, H, W)
    if variant.endswith("-cl"):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    half = torch.float16 if device.type == "cuda" else torch.bfloat16
    autocast = variant.startswith("bf16")
    times = []
    for i in range(steps + 1):  # the first step warms up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=half, enabled=autocast):
            out = model(x)
        loss = sum(v.float().mean() for v in out.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _options(pairs: list[str]) -> dict[str, Any]:
    """``["stem=small", "depth=3"]`` -> ``{"stem": "small", "depth": 3}`` (YAML scalars)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--option takes KEY=VALUE, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--models", nargs="*", default=[m[0] for m in MODELS])
    parser.add_argument("--size", type=int, help="input size (default: by scale and task)")
    parser.add_argument("--batch", type=int, help="batch size (default: by scale and task)")
    parser.add_argument("--width", type=int, help="width of the models that have one")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--variants", nargs="*", default=["fp32"], choices=VARIANTS)
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, device {device}"
    )
    print(f"{'model':<22}{'variant':>9}{'input':>7}{'batch':>7}{'step ms':>10}{'images/s':>10}")
    for name, channels, task, width in MODELS:
        if name not in args.models:
            continue
        size, batch = SIZES["cuda" if device.type == "cuda" else "cpu"][task]
        size, batch = args.size or size, args.batch or batch
        width = args.width if args.width and width is not None else width
        known = MODELS_BY_NAME.get(name).option_defaults
        mine = {k: v for k, v in _options(args.option).items() if k in known}
        for options in [{}, mine] if mine else [{}]:
            label = name + "".join(f" {k}={v}" for k, v in options.items())
            for variant in args.variants:
                seconds = _step_time(
                    name, channels, task, width, size, batch, args.steps, device, variant, options
                )
                print(
                    f"{label:<22}{variant:>9}{size:>7}{batch:>7}{seconds * 1000:>10.1f}"
                    f"{batch / seconds:>10.1f}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
