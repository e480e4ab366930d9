"""The FastAPI application: health and readiness until the per-stage routes land."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from breastdx import __version__
from service.config import Settings, get_settings
from service.problems import install_problem_handlers
from service.readiness import readiness_report


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    app = FastAPI(title="breastdx", version=__version__)
    app.state.settings = settings
    install_problem_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"]
        )

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["operations"])
    def readyz() -> JSONResponse:
        """Readiness: models present and verified, Redis reachable when configured."""
        report = readiness_report(settings)
        return JSONResponse(report.model_dump(), status_code=200 if report.ready else 503)

    return app
