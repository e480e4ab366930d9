"""``breastdx warm-start``: a shipped ONNX file -> a state dict a training config can start from.

    breastdx warm-start --config training/configs/ship/ultrasound.yaml \\
        --onnx models_registry/store/ultrasound-unet/7/model.onnx --out runs/base.pt [--n 48]

The config names the network (it must be the one the file was exported from) and the data: ``--n``
training images, preprocessed and augmented as in training, calibrate the batch norms that the
export folded away (``training.onnx_weights``), and the rebuilt network is checked against the
file with ONNX Runtime on them (where the config trains on crops, on a few of the same images
whole, at the size the file was exported at). Then ``breastdx train --config FINE.yaml`` with
``model.pretrained: runs/base.pt`` fine-tunes it. Prints a JSON summary; a file that does not fit
the network or an --out that cannot be written exits 1 with a message; bad usage exits 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from breastdx.errors import BreastdxError

PROG = "breastdx warm-start"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="the network's training YAML")
    parser.add_argument("--onnx", type=Path, required=True, help="the exported model.onnx")
    parser.add_argument("--out", type=Path, required=True, help="state dict to write (torch.save)")
    add_rebuild_arguments(parser)
    return parser


def add_rebuild_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a rebuild from ONNX (``rebuild_from_onnx``) and the config overrides."""
    parser.add_argument("--n", type=int, default=48, help="training images that calibrate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest output difference")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")


def rebuild_usage_error(args: argparse.Namespace) -> str | None:
    """What is wrong with ``add_rebuild_arguments``' values, or None."""
    if args.n < 2:
        return "--n must be at least 2"
    if not args.tolerance > 0:
        return f"--tolerance must be above 0, got {args.tolerance}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    error = rebuild_usage_error(args)
    if error is not None:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    if args.out.is_dir():
        print(f"{PROG}: --out {args.out} is a folder; name the file to write", file=sys.stderr)
        return 2
    if not args.onnx.is_file():
        print(f"{PROG}: {args.onnx} is not a file", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from training.config import load_config
    from training.onnx_weights import rebuild_from_onnx

    try:
        config = load_config(args.config, args.overrides)
        _, weights, n = rebuild_from_onnx(
            config, args.onnx, n=args.n, seed=args.seed, tolerance=args.tolerance
        )
    except BreastdxError as exc:
        print(f"{PROG}: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(weights.state, args.out)
    except (OSError, RuntimeError) as exc:  # torch reports a failed open as RuntimeError
        print(f"{PROG}: cannot write {args.out}: {exc}", file=sys.stderr)
        return 1
    summary = {
        "out": str(args.out),
        "onnx": str(args.onnx),
        "by_name": weights.by_name,
        "unfolded_batch_norms": weights.unfolded,
        "calibration_images": n,
        "max_abs_diff": weights.max_abs_diff,
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
