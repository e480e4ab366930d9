"""``breastdx pacs analyze``: pull a study from a DICOMweb PACS, analyse it, store results back.

    breastdx pacs analyze --study-uid UID [--dicomweb URL] [--user USER] [--password PASS]
                          [--store DIR]... [--force]

``--dicomweb`` and the credentials default to ``BREASTDX_DICOM_DICOMWEB_URL``, ``_USER`` and
``_PASSWORD`` (prefer the environment for the password: a command line is visible to other
users). One JSON line per instance of the study (SOP Instance UID, status, stage, model, reason,
result UIDs); exit 0 when nothing failed, 1 otherwise, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from pydantic import ValidationError

from breastdx.errors import BreastdxError

PROG = "breastdx pacs"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    analyze = sub.add_parser("analyze", help="analyse one study and store the results back")
    analyze.add_argument("--study-uid", required=True, help="Study Instance UID")
    analyze.add_argument("--dicomweb", help="DICOMweb root URL, e.g. http://pacs/dicom-web")
    analyze.add_argument("--user", help="DICOMweb user (basic auth)")
    analyze.add_argument("--password", help="DICOMweb password (or set it in the environment)")
    analyze.add_argument("--store", action="append", help="model store (repeatable)")
    analyze.add_argument("--force", action="store_true", help="analyse instances seen before")
    analyze.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING"])
    return parser


def _run(args: argparse.Namespace) -> int:
    from models_registry.registry import Registry
    from service.config import get_settings
    from service.jobs.backend import service_registry
    from service.pacs.config import DicomSettings
    from service.pacs.dicomweb import DicomWebClient
    from service.pacs.pull import PacsAnalyzer
    from service.pacs.state import is_uid, open_state

    overrides = {
        "dicomweb_url": args.dicomweb,
        "dicomweb_user": args.user,
        "dicomweb_password": args.password,
    }
    settings = DicomSettings(**{k: v for k, v in overrides.items() if v is not None})
    if not settings.dicomweb_url:
        print(f"{PROG}: give --dicomweb or set BREASTDX_DICOM_DICOMWEB_URL", file=sys.stderr)
        return 2
    if not is_uid(args.study_uid):
        print(f"{PROG}: --study-uid is not a valid UID", file=sys.stderr)
        return 2
    service = get_settings()
    registry = Registry(args.store) if args.store else service_registry(service)
    password = settings.dicomweb_password.get_secret_value() if settings.dicomweb_password else None
    with DicomWebClient(
        settings.dicomweb_url,
        user=settings.dicomweb_user,
        password=password,
        timeout_s=settings.timeout_s,
    ) as client:
        analyzer = PacsAnalyzer(
            client,
            settings,
            registry,
            open_state(settings.spool_dir, service.redis_url),
            user=settings.dicomweb_user,
            password=password,
            max_pixels=service.max_pixels,
        )
        report = analyzer.analyze_study(args.study_uid, force=args.force)
    for instance in report.instances:
        print(json.dumps(dataclasses.asdict(instance)))
    if not report.instances:
        print(f"{PROG}: the study has no instances on the server", file=sys.stderr)
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    """Analyse one study; exit 0 (nothing failed), 1 (failures) or 2 (bad usage)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"{PROG}: invalid settings: {problems}", file=sys.stderr)
        return 2
    except BreastdxError as exc:
        print(f"{PROG}: {exc.code}: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
