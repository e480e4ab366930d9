"""``breastdx train --config cfg.yaml [section.key=value ...]``: one training run.

Prints a JSON summary of the run on stdout. A bad configuration exits 2 with the rule it broke; an
error of the data or model (missing folder, unknown model name) exits 1 with its message.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from breastdx.errors import BreastdxError
from training.config import ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="breastdx train", description="Train one model from a YAML config plus overrides."
    )
    parser.add_argument("--config", type=Path, required=True, help="YAML training configuration")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. optim.lr=1e-4"
    )
    parser.add_argument("--resume", action="store_true", help="continue from output_dir/last.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Load the configuration, train, print the summary; exit 0, 1 (run failed) or 2 (config)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        overrides = list(args.overrides) + (["progress=false"] if args.no_progress else [])
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"breastdx train: {exc.message}", file=sys.stderr)
        return 2
    from training.trainer import train  # local: keeps --help and config errors fast

    try:
        result = train(config, resume=args.resume)
    except ConfigError as exc:  # e.g. a split file made with another protocol
        print(f"breastdx train: {exc.message}", file=sys.stderr)
        return 2
    except BreastdxError as exc:
        print(f"breastdx train: {exc.message}", file=sys.stderr)
        return 1
    summary = {
        "output_dir": str(result.output_dir),
        "epochs_run": result.epochs_run,
        "last_epoch": result.last_epoch,
        "best_epoch": result.best_epoch,
        "best_metric": result.best_metric,
        "stopped_early": result.stopped_early,
        "metrics_file": str(result.metrics_file) if result.metrics_file else None,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
