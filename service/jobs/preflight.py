"""Checks made at submission, before anything is stored or queued.

Cheap and early, so that a client learns at once (415, 422, 413) what the worker would refuse
later: the model is pinned (``service.inference.pin_model``: ``name@version``, so an alias moved
while the job waits does not change what runs), and every input is checked
(``service.inference.check_input``: decoded with the pixel limit, its frame picked by the card's
frame policy, its display image built, the stage rule run on it). In process the job carries
the :class:`CheckedRequest` to its attempt, which analyses the inputs as checked here; a queue
worker, in another process, checks the stored bytes again. The check never loads an ONNX
Runtime session.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from breastdx.errors import BreastdxError
from models_registry.card import ModelCard, Stage
from service.inference import CheckedInput, check_input


@dataclass(frozen=True, eq=False)
class CheckedRequest:
    """What the submission check made of one request: the pinned card and the checked inputs
    (empty where they are not kept: the job runs in another process)."""

    card: ModelCard
    inputs: tuple[CheckedInput, ...] = ()


def check_inputs(
    stage: Stage, card: ModelCard, inputs: Sequence[bytes], max_pixels: int, *, keep: bool = True
) -> CheckedRequest:
    """Check each input for the model of ``card``; ``keep``: hold on to the checked inputs
    (decoded pixels and display images) for a job that runs in this process.

    Raises:
        ImagingError, WrongStageError: with ``input_index`` in the error's context.
    """
    frame_policy = card.preprocess_config().frame_policy
    checked = []
    for index, data in enumerate(inputs):
        try:
            one = check_input(stage, data, frame_policy, max_pixels)
        except BreastdxError as exc:
            exc.context["input_index"] = index
            if len(inputs) > 1:
                exc.message = f"input {index}: {exc.message}"
            raise
        if keep:
            checked.append(one)
    return CheckedRequest(card, tuple(checked))
