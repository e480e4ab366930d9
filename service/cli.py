"""``breastdx serve``: run the HTTP API with uvicorn.

Anonymous access (``BREASTDX_ALLOW_ANONYMOUS=true``) on an address other than loopback is
refused unless ``--i-know-anonymous-is-public`` (or ``BREASTDX_I_KNOW_ANONYMOUS_IS_PUBLIC=true``)
says it is meant; then it is said at start. SIGTERM stops the server: requests still running get
``shutdown_timeout_s`` to finish.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

from breastdx.errors import BreastdxError

logger = logging.getLogger(__name__)
PUBLIC_FLAG = "--i-know-anonymous-is-public"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def anonymous_exposure(host: str, allow_anonymous: bool, public_ok: bool) -> str | None:
    """Why serving is refused (anonymous access off loopback, not acknowledged), else None."""
    if not allow_anonymous or is_loopback(host) or public_ok:
        return None
    return (
        f"anonymous access (BREASTDX_ALLOW_ANONYMOUS=true) on {host}, which is not a loopback "
        f"address, would let anyone on the network run analyses; bind to 127.0.0.1, create API "
        f"keys (breastdx api-keys create NAME), or pass {PUBLIC_FLAG} "
        "(BREASTDX_I_KNOW_ANONYMOUS_IS_PUBLIC=true) if that is what you want"
    )


def require_runtime(*requested: str) -> None:
    """Each runtime named explicitly (``BREASTDX_RUNTIME``, ``BREASTDX_STAGE_RUNTIMES``) must be
    installed and computed by this CPU: refuse to start otherwise."""
    from models_registry.card import Runtime
    from models_registry.runtime import require

    for name in sorted(set(requested) - {"auto"}):
        require(Runtime(name))  # RuntimeUnavailableError / RuntimeUnsupportedError


def serve_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="breastdx serve", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument(
        PUBLIC_FLAG,
        dest="public_ok",
        action="store_true",
        help="allow anonymous access on a non-loopback address (BREASTDX_ALLOW_ANONYMOUS=true)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error("--port must be between 1 and 65535")
    try:
        import uvicorn

        from service.config import get_settings
        from service.logs import configure_logging

        settings = get_settings()
        configure_logging(settings.log_level)  # JSON lines; the access line carries request ids
        require_runtime(*settings.runtimes())
        public_ok = args.public_ok or settings.i_know_anonymous_is_public
        refusal = anonymous_exposure(args.host, settings.allow_anonymous, public_ok)
        if refusal:
            print(f"breastdx serve: refused: {refusal}", file=sys.stderr)
            return 2
        if settings.allow_anonymous:
            where = "loopback only" if is_loopback(args.host) else f"PUBLIC on {args.host}"
            logger.warning("anonymous access is on (%s): requests need no API key", where)
        uvicorn.run(
            "service.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=settings.log_level.lower(),
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=settings.shutdown_timeout_s,
        )
    except BreastdxError as exc:
        print(f"breastdx serve: {exc.message}", file=sys.stderr)
        return 1
    return 0
