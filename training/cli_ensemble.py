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
from training.cli_warm_start import add_rebuild_arguments, rebuild_usage_error

PROG = "breastdx ensemble"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="the members' training YAML")
    parser.add_argument(
        "--member",
        type=Path,
        action="append",
        required=True,
        help="a trainer checkpoint or a registered model.onnx (card.json beside it; an ensemble's "
        "file joins as its networks); twice or more",
    )
    parser.add_argument("--out", type=Path, required=True, help="the ensemble's run folder")
    add_rebuild_arguments(parser)  # how an ONNX member is rebuilt, as breastdx warm-start does
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    error = rebuild_usage_error(args)
    if len(args.member) < 2:
        error = "name at least two --member files"
    if error is not None:
        print(f"{PROG}: {error}", file=sys.stderr)
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
