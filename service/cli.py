"""``breastdx serve``: run the HTTP API with uvicorn."""

from __future__ import annotations

import argparse
import sys

from breastdx.errors import BreastdxError


def serve_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="breastdx serve", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error("--port must be between 1 and 65535")
    try:
        import uvicorn

        from service.config import get_settings
        from service.observability import configure_logging

        settings = get_settings()
        configure_logging(settings.log_level)  # JSON lines; the access line carries request ids
        uvicorn.run(
            "service.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=settings.log_level.lower(),
            log_config=None,
            access_log=False,
        )
    except BreastdxError as exc:
        print(f"breastdx serve: {exc.message}", file=sys.stderr)
        return 1
    return 0
