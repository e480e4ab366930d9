"""The single-page web client: ``GET /`` and its static assets under ``/static/``.

Plain HTML, CSS and JavaScript shipped in ``static/``; no framework, no CDN. The page talks to
the same ``/v1`` API as any client (its API key, if any, stays in the tab's sessionStorage).
Assets are served from a fixed list, so no request path ever reaches the file system.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse

from breastdx import __version__
from breastdx.errors import BreastdxError

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
MEDIA_TYPES: Final = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class AssetNotFoundError(BreastdxError):
    """A ``/static/`` name outside the page's assets."""

    code = "not_found"
    title = "Not Found"
    http_status = 404


router = APIRouter(include_in_schema=False)


def _asset(name: str) -> bytes:
    if name not in MEDIA_TYPES:
        raise AssetNotFoundError(f"no such static asset; assets: {', '.join(MEDIA_TYPES)}")
    return (STATIC_DIR / name).read_bytes()


@router.get("/", response_class=HTMLResponse)
def index() -> Response:
    """The page (with the version stamped into its asset URLs to defeat stale caches)."""
    html = _asset("index.html").decode("utf-8").replace("{{version}}", __version__)
    return HTMLResponse(html, headers=SECURITY_HEADERS)


@router.get("/static/{name}")
def static(name: str) -> Response:
    """One of the page's assets: ``app.js``, ``style.css`` or ``index.html``."""
    return Response(_asset(name), media_type=MEDIA_TYPES[name], headers=SECURITY_HEADERS)
