"""``GET /v1/models``: the model each stage's requests run on, with its card."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from models_registry.card import Stage
from models_registry.registry import Registry
from service.deps import CanReadModels, RegistryDep
from service.inference import NoModelForStageError, pin_model
from service.inference.runner import loaded_selections
from service.inference.runtime_choice import Selection
from service.routes.analyses import PROBLEMS
from service.schemas import ModelPublic, ModelsPublic, RuntimePublic

router = APIRouter(tags=["models"])


def served_models(registry: Registry) -> list[ModelPublic]:
    """Per stage, the version a request without ``?model=`` runs (its production alias)."""
    served, loaded = [], loaded_selections()
    for stage in Stage:
        try:
            card = pin_model(stage, registry, None)
        except NoModelForStageError:
            continue
        served.append(
            ModelPublic(
                stage=stage,
                ref=card.ref,
                aliases=registry.aliases(card.name),
                card=card,
                runtime=runtime_public(loaded.get(card.ref)),
            )
        )
    return served


def runtime_public(selection: Selection | None) -> RuntimePublic | None:
    """What ``selection`` chose, for the API; None for a model this process has not loaded."""
    if selection is None:
        return None
    return RuntimePublic(
        requested=str(selection.requested),
        runtime=selection.runtime,
        device=selection.device,
        trials=[trial.describe() for trial in selection.trials],
    )


@router.get("/models", response_model=ModelsPublic, responses=PROBLEMS)
async def list_models(registry: RegistryDep, caller: CanReadModels) -> ModelsPublic:
    """The served models' cards: inputs, preprocessing, thresholds, metrics, provenance."""
    return ModelsPublic(models=await run_in_threadpool(served_models, registry))
