"""``breastdx inspect FILE...``: decode each file and print one JSON line per file.

A decoded file prints ``{"path", "ok": true, "metadata": {...}}`` (``ImageMetadata`` as JSON); a
file that cannot be used prints ``{"path", "ok": false, "error": {"code", "message"}}``. The exit
status is 0 when every file decoded, 1 otherwise, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from imaging.decode import decode
from imaging.errors import ImagingError
from imaging.limits import DEFAULT_MAX_PIXELS

logger = logging.getLogger(__name__)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``breastdx inspect`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="breastdx inspect",
        description="Decode images (DICOM, PNG, JPEG, PGM, TIFF) and print their metadata as "
        "one JSON line per file.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="image files to inspect")
    parser.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=DEFAULT_MAX_PIXELS,
        help="refuse images declaring more values than this "
        "(rows x columns x frames x samples; default %(default)s)",
    )
    return parser


def inspect_file(path: str, max_pixels: int) -> dict[str, Any]:
    """The JSON-ready result line for one file."""
    try:
        image = decode(path, max_pixels=max_pixels)
    except ImagingError as exc:
        return {"path": path, "ok": False, "error": {"code": exc.code, "message": exc.message}}
    except MemoryError:
        logger.error("out of memory while decoding a file")
        message = "Not enough memory to decode this image."
        return {"path": path, "ok": False, "error": {"code": "out_of_memory", "message": message}}
    return {"path": path, "ok": True, "metadata": image.metadata.model_dump(mode="json")}


def main(argv: list[str] | None = None) -> int:
    """Run ``breastdx inspect``; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 for --help
        return exc.code if isinstance(exc.code, int) else 2
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
        )
    all_ok = True
    for path in args.files:
        line = inspect_file(path, args.max_pixels)
        all_ok = all_ok and bool(line["ok"])
        print(json.dumps(line, ensure_ascii=False), flush=True)
    return 0 if all_ok else 1
