"""The ``/v1`` API: analyses and models."""

from fastapi import APIRouter

from service.routes import analyses, models

api_router = APIRouter(prefix="/v1")
api_router.include_router(analyses.router)
api_router.include_router(models.router)

__all__ = ["api_router"]
