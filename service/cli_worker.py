"""``breastdx worker``: serve the per-stage analysis queues (needs ``BREASTDX_REDIS_URL``).

    breastdx worker [--queues mammography ultrasound ...] [--burst] [--name NAME]

Loads and warms each served stage's model once, then runs jobs until SIGTERM (finishing the
current one) or, with ``--burst``, until the queues are empty. Exit 0 on a clean stop, 1 when
Redis is not configured or cannot be reached, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import logging
import sys

import redis

from breastdx.errors import BreastdxError
from models_registry.card import Stage

PROG = "breastdx worker"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    stages = [s.value for s in Stage]
    parser.add_argument(
        "--queues",
        nargs="+",
        choices=stages,
        default=stages,
        metavar="STAGE",
        help=f"stages to serve (default: all of {', '.join(stages)})",
    )
    parser.add_argument("--burst", action="store_true", help="quit once the queues are empty")
    parser.add_argument("--name", help="worker name (default: random)")
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from service.config import get_settings
    from service.logs import configure_logging
    from service.worker import run_worker

    settings = get_settings()
    level = args.log_level or settings.log_level.upper()
    configure_logging(level)
    if level != "DEBUG":  # highdicom logs each module it copies into a SEG or SR, with its UID
        logging.getLogger("highdicom").setLevel(logging.WARNING)
    if not settings.redis_url:
        print(
            f"{PROG}: set BREASTDX_REDIS_URL (redis://host:port/db) to serve queues",
            file=sys.stderr,
        )
        return 1
    try:
        run_worker(
            settings,
            [Stage(q) for q in dict.fromkeys(args.queues)],
            burst=args.burst,
            name=args.name,
            log_level=level,
        )
    except redis.RedisError as exc:
        print(f"{PROG}: Redis unreachable: {type(exc).__name__}", file=sys.stderr)
        return 1
    except BreastdxError as exc:  # e.g. BREASTDX_RUNTIME names a runtime that cannot run here
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
