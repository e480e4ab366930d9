"""Model-only time of one registered model on every runtime its card allows, at one batch size.

The float32 runtimes run ``model.onnx``; the reduced-precision ones the card lists run what they
run (``openvino-bf16`` the same file in bf16, the int8 runtimes ``model.int8.onnx``). Inputs are
random normal values of the card's input shape; the time of a run does not depend on them.
Each runtime: 3 warm-up runs, then runs for ``--seconds`` (at least 20), median printed.

Usage: ``.venv/bin/python bench/bench_variants.py --model histopathology-resnet18 --batch 64``
(issue 13's model-time target: a batch of 64 patches, 2 threads).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from evaluation.cli import exit_code  # noqa: E402
from models_registry.card import Runtime  # noqa: E402
from models_registry.registry import Registry  # noqa: E402
from models_registry.runtime import RuntimeOptions, installed, open_session  # noqa: E402
from models_registry.store import SHIPPED_STORE  # noqa: E402


def _at_least(kind: type, low: float) -> object:
    def parse(text: str) -> object:
        value = kind(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="NAME, NAME@ALIAS or NAME@VERSION")
    parser.add_argument("--store", type=Path, default=SHIPPED_STORE)
    parser.add_argument("--batch", type=_at_least(int, 1), default=1)
    parser.add_argument("--threads", type=_at_least(int, 1), default=2)
    parser.add_argument(
        "--seconds", type=_at_least(float, 0.0), default=6.0, help="timed seconds per runtime"
    )
    args = parser.parse_args(argv)  # bad usage: argparse's message, exit 2
    return exit_code("bench_variants", lambda: _time_runtimes(args))


def _time_runtimes(args: argparse.Namespace) -> int:
    loaded = Registry([args.store]).load(args.model)
    card = loaded.card
    shape = (args.batch, card.input.channels, *card.input.size)
    batch = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    outputs = [card.outputs[0].name]
    options = RuntimeOptions(threads=args.threads, spinning=False)
    print(f"# {card.ref}: input {shape}, {args.threads} thread(s), median of timed runs")
    base = None
    for runtime in Runtime:
        if not (card.allows(runtime) and installed(runtime)):
            continue
        session = open_session(loaded.onnx_path, runtime, options)
        for _ in range(3):
            session.run(outputs, {card.input.name: batch})
        times: list[float] = []
        start = time.perf_counter()
        while time.perf_counter() - start < args.seconds or len(times) < 20:
            began = time.perf_counter()
            session.run(outputs, {card.input.name: batch})
            times.append((time.perf_counter() - began) * 1000.0)
        median = statistics.median(times)
        base = base or median  # ONNX Runtime comes first: the float32 reference
        print(
            f"{runtime.value:<18} {median:8.1f} ms  {base / median:5.2f}x  "
            f"({session.path.name}, {session.device}, {len(times)} runs)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
