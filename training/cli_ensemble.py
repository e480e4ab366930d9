"""``breastdx ensemble``: trained networks of one recipe averaged into one model.

    breastdx ensemble --config training/configs/ship/ultrasound.yaml \\
        --member runs/us-seed1/best.pt \\
        --member models_registry/store/ultrasound-unet/7/model.onnx --out runs/us-ensemble
    breastdx export --checkpoint runs/us-ensemble/best.pt --out <dir>/model.onnx ...

``--config`` is the recipe the members share (data, split, input size and preprocessing); each
``--member`` is a trainer checkpoint (``best.pt``) or a registered ``model.onnx`` with its
``card.json`` beside it (``training.ensemble``). ``--out`` becomes a finished run's folder:
``best.pt`` (the ensemble's weights), ``metrics.json`` (temperature fitted on validation,
validation and test figures) and the split. Prints a JSON summary; members that cannot be read
or do not fit together exit 1 with a message; bad usage exits 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from breastdx.errors import BreastdxError

PROG = "breastdx ensemble"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="the members' training YAML")
    parser.add_argument(
        "--member",
        type=Path,
        action="append",
        required=True,
        help="a trainer checkpoint or a registered model.onnx (card.json beside it); twice or more",
    )
    parser.add_argument("--out", type=Path, required=True, help="the ensemble's run folder")
    parser.add_argument("--n", type=int, default=48, help="images that calibrate an ONNX member")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-3, help="ONNX member rebuild check")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if len(args.member) < 2:
        print(f"{PROG}: name at least two --member files", file=sys.stderr)
        return 2
    if args.n < 2:
        print(f"{PROG}: --n must be at least 2", file=sys.stderr)
        return 2
    if not args.tolerance > 0:
        print(f"{PROG}: --tolerance must be above 0, got {args.tolerance}", file=sys.stderr)
        return 2
    if args.out.is_file():
        print(f"{PROG}: --out {args.out} is a file; name a folder", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from training.config import load_config
    from training.ensemble import build_ensemble

    try:
        config = load_config(args.config, args.overrides)
        summary = build_ensemble(
            config, args.member, args.out, n=args.n, seed=args.seed, tolerance=args.tolerance
        )
    except BreastdxError as exc:
        print(f"{PROG}: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{PROG}: cannot write {args.out}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
