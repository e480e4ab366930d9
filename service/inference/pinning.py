"""Which model serves a request: resolved once, pinned to ``name@version``, its card handed down.

A request names a model (``name``, ``name@alias``, ``name@version``) or none: then the stage's
model serves it, one with a ``production`` alias first, then the one named after the stage, then
by name. :func:`pin_model` resolves either once and checks that the model serves the stage; the
card it returns travels with the request (the job record keeps its ``ref``), so an alias moved
while the job waits does not change what runs.
"""

from __future__ import annotations

import logging

from breastdx.errors import BreastdxError
from models_registry.card import ModelCard, Stage
from models_registry.errors import RegistryError
from models_registry.registry import PRODUCTION, Registry

logger = logging.getLogger(__name__)


class NoModelForStageError(BreastdxError):
    """No registered model serves the requested stage."""

    code = "no_model_for_stage"
    title = "No model for this stage"
    http_status = 503


class ModelStageMismatchError(BreastdxError):
    """The requested model serves another stage than the one requested."""

    code = "model_stage_mismatch"
    title = "Model serves another stage"
    http_status = 422


def _served_card(stage: Stage, registry: Registry) -> ModelCard:
    """The card of the model serving ``stage`` when the request names none."""
    candidates: list[tuple[tuple[bool, bool, str], ModelCard]] = []
    for name in registry.names():
        try:
            card = registry.card(name)
        except RegistryError:  # a broken model must not hide the others
            logger.warning("model card unreadable", extra={"model": name})
            continue
        if card.stage is stage:
            rank = (PRODUCTION not in registry.aliases(name), name != stage.value, name)
            candidates.append((rank, card))
    if not candidates:
        raise NoModelForStageError(
            f"no registered model serves stage {stage.value}; register one with "
            "'breastdx export --register' or name one with --model",
            stage=stage.value,
        )
    return min(candidates, key=lambda candidate: candidate[0])[1]


def default_model_ref(stage: Stage, registry: Registry) -> str:
    """The name of the model serving ``stage`` when a request names none."""
    return _served_card(stage, registry).name


def pin_model(stage: Stage, registry: Registry, model_ref: str | None = None) -> ModelCard:
    """The card of the version that serves ``stage``: ``model_ref``'s, else the stage's model.

    Raises:
        NoModelForStageError: ``model_ref`` is None and no model serves the stage.
        RegistryError: ``model_ref`` names nothing, or a card cannot be read.
        ModelStageMismatchError: the model serves another stage.
    """
    card = registry.card(model_ref) if model_ref else _served_card(stage, registry)
    return check_serves(card, stage)


def check_serves(card: ModelCard, stage: Stage) -> ModelCard:
    """``card`` if its model serves ``stage``, else :class:`ModelStageMismatchError`."""
    if card.stage is not stage:
        raise ModelStageMismatchError(
            f"model {card.ref} serves stage {card.stage.value}, not {stage.value}",
            model=card.ref,
            stage=stage.value,
        )
    return card
