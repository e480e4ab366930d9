"""``GET /v1/models``: the model each stage's requests run on, with its card."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from models_registry.card import Stage
from models_registry.registry import Registry
from service.deps import CanReadModels, RegistryDep
from service.inference.pipeline import NoModelForStageError
from service.jobs.preflight import pin_model
from service.routes.analyses import PROBLEMS
from service.schemas import ModelPublic, ModelsPublic

router = APIRouter(tags=["models"])


def served_models(registry: Registry) -> list[ModelPublic]:
    """Per stage, the version a request without ``?model=`` runs (its production alias)."""
    served = []
    for stage in Stage:
        try:
            card = pin_model(stage, registry, None)
        except NoModelForStageError:
            continue
        served.append(
            ModelPublic(stage=stage, ref=card.ref, aliases=registry.aliases(card.name), card=card)
        )
    return served


@router.get("/models", response_model=ModelsPublic, responses=PROBLEMS)
async def list_models(registry: RegistryDep, caller: CanReadModels) -> ModelsPublic:
    """The served models' cards: inputs, preprocessing, thresholds, metrics, provenance."""
    return ModelsPublic(models=await run_in_threadpool(served_models, registry))
