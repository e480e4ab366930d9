"""Training throughput (images/s) per model: forward + backward + AdamW step on random data.

    .venv/bin/python bench/bench_training.py [--device cpu|cuda] [--steps 5] [--models unet ...]

Prints one row per model with the input size and batch used, the median step time and images/s.
Sizes default to the grid's ``cpu`` scale on CPU and its ``full`` scale on CUDA.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from training.models import build_model

# (model, in_channels, task, width) -- the paper's seven networks plus the CPU-scale DeepLab.
MODELS = [
    ("unet", 1, "seg", 16),
    ("resunetpp", 1, "seg", 8),
    ("deeplabv3_mobilenet", 1, "seg", None),
    ("deeplabv3", 1, "seg", None),
    ("vgg19", 3, "cls", None),
    ("resnet50", 3, "cls", None),
    ("densenet121", 3, "cls", None),
    ("efficientnet_v2_s", 3, "cls", None),
]
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
) -> float:
    model = build_model(name, in_channels=channels, width=width, input_size=size).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(batch, channels, size, size, device=device)  # (B, C, H, W)
    times = []
    for i in range(steps + 1):  # the first step warms up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--models", nargs="*", default=[m[0] for m in MODELS])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, device {device}"
    )
    print(f"{'model':<22}{'input':>8}{'batch':>7}{'step ms':>10}{'images/s':>10}")
    for name, channels, task, width in MODELS:
        if name not in args.models:
            continue
        size, batch = SIZES["cuda" if device.type == "cuda" else "cpu"][task]
        seconds = _step_time(name, channels, task, width, size, batch, args.steps, device)
        print(f"{name:<22}{size:>8}{batch:>7}{seconds * 1000:>10.1f}{batch / seconds:>10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
