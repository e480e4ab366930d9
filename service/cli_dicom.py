"""``breastdx dicom-listener`` and ``breastdx dicom-deadletter``: the hospital-side commands.

    breastdx dicom-listener [--ae-title BREASTDX] [--port 11112] [--host 127.0.0.1]
                            [--allowed-ae MODALITY1 ...]
    breastdx dicom-deadletter list
    breastdx dicom-deadletter replay ID [--attempts N]

Options override the ``BREASTDX_DICOM_*`` environment (``service.pacs.config``); the models,
Redis and the job limits come from the service's ``BREASTDX_*`` settings, as for the API. The
listener runs until SIGINT or SIGTERM. ``list`` prints one JSON line per undelivered result set;
``replay`` sends one again and exits 0 once every pending destination acknowledged it.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Any

from pydantic import ValidationError

from breastdx.errors import BreastdxError
from service.pacs.config import DicomSettings

logger = logging.getLogger(__name__)


def _settings(prog: str, overrides: dict[str, Any]) -> DicomSettings:
    try:
        return DicomSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SystemExit(f"{prog}: invalid settings: {problems}") from None


def _listener_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="breastdx dicom-listener",
        description="receive DICOM images (C-STORE), analyse them, send SEG/SR/SC results back",
    )
    parser.add_argument("--ae-title", help="our AE title (default BREASTDX)")
    parser.add_argument("--port", type=int, help="listening port (default 11112)")
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument(
        "--allowed-ae", nargs="+", action="extend", metavar="AE", help="calling AE titles allowed"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    return parser


def listener_main(argv: list[str] | None = None) -> int:
    """Run the DICOM listener until interrupted."""
    args = _listener_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.log_level != "DEBUG":  # association chatter and highdicom's module copying
        for noisy in ("pynetdicom", "highdicom"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = _settings(
        "breastdx dicom-listener",
        {
            "ae_title": args.ae_title,
            "port": args.port,
            "host": args.host,
            "allowed_aes": args.allowed_ae,
        },
    )
    from service.pacs.listener import DicomListener
    from service.pacs.processing import Submitter

    try:
        listener = DicomListener(settings, Submitter(settings))
        listener.start()
    except (ValueError, OSError) as exc:
        print(f"breastdx dicom-listener: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(f"listening as {settings.ae_title} on {settings.host}:{listener.port}", flush=True)
    stop.wait()
    listener.stop()
    return 0


def _deadletter_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="breastdx dicom-deadletter", description="list or replay undelivered DICOM results"
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="one JSON line per dead letter, oldest first")
    replay = sub.add_parser("replay", help="deliver one dead letter again")
    replay.add_argument("id", help="the dead letter's id (from 'list')")
    replay.add_argument("--attempts", type=int, help="tries before giving up (default: settings)")
    return parser


def deadletter_main(argv: list[str] | None = None) -> int:
    """``list`` (exit 0) or ``replay ID`` (exit 0 delivered, 1 not)."""
    args = _deadletter_parser().parse_args(argv)
    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
    prog = "breastdx dicom-deadletter"
    from service.pacs.delivery import dead_letters, replay

    if args.action == "list":
        settings = _settings(prog, {})
        for letter in dead_letters(settings).all():
            print(letter.model_dump_json())
        return 0
    settings = _settings(prog, {"delivery_attempts": args.attempts})
    try:
        report = replay(args.id, settings)
    except BreastdxError as exc:
        print(f"{prog}: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    line = {"id": args.id, "delivered": report.delivered, "pending": report.pending}
    print(json.dumps(line | {"errors": report.errors}))
    return 0 if report.ok else 1
