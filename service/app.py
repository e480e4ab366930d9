"""The FastAPI application: ``/v1`` analyses and models, health and readiness.

Open without a key: ``/healthz``, ``/readyz`` and the web page ``/``. Everything under ``/v1``
needs an API key unless ``allow_anonymous`` is set. Request bodies are limited to
``max_upload_bytes`` (413); CORS is closed unless ``cors_origins`` names origins. In process,
the app's start opens and warms each stage's served model in the background
(``service.readiness.Warmup``; under ``BREASTDX_RUNTIME=auto`` the runtime choice happens
there), and ``/readyz`` is not ready until that has finished.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from breastdx import __version__
from service.config import Settings, get_settings
from service.jobs.backend import close_backend
from service.jobs.hooks import load_hook_modules
from service.observability import install_observability
from service.problems import install_problem_handlers
from service.readiness import Warmup, readiness_report
from service.routes import api_router
from service.security.upload import BodyLimitMiddleware
from service.web import router as web_router


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    load_hook_modules(settings.hook_modules)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.queued:  # queued, the workers load the models
            app.state.warmup = Warmup(settings).start()
        yield
        if app.state.warmup is not None:  # a model run must not outlive the app
            app.state.warmup.join(settings.shutdown_timeout_s)
        close_backend(settings)

    app = FastAPI(title="breastdx", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.warmup = None
    install_problem_handlers(app)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_upload_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Prefer", "Idempotency-Key"],
            expose_headers=["Location", "Preference-Applied", "Retry-After"],
        )

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["operations"])
    async def readyz() -> JSONResponse:
        """Readiness: models verified (and warmed, in process), Redis reachable and workers
        alive when queued."""
        report = await run_in_threadpool(readiness_report, settings, app.state.warmup)
        return JSONResponse(report.model_dump(), status_code=200 if report.ready else 503)

    app.include_router(api_router)
    app.include_router(web_router)
    install_observability(app, settings)
    return app
