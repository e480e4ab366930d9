"""Checks made at submission, before anything is stored or queued.

Cheap and early, so that a client learns at once (415, 422, 413) what the worker would refuse
later: the model is resolved and pinned (``name@version``, so an alias moved while the job waits
does not change what runs), every input is decoded with the pixel limit, its frame picked by the
card's frame policy, and the stage rules run on it (``service.inference.stages``). A worker
decodes again and runs the full pipeline; in process the job analyses the images decoded here.
The check costs one decode per image in the API process and never loads an ONNX Runtime
session.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from breastdx.errors import BreastdxError
from imaging import decode
from imaging.preprocess import select_frame
from models_registry.card import ModelCard, Stage
from models_registry.registry import Registry
from service.inference.pipeline import Predecoded, default_model_ref
from service.inference.stages import ModelStageMismatchError, check_stage


def pin_model(stage: Stage, registry: Registry, model_ref: str | None) -> ModelCard:
    """The card of the version that will serve ``stage`` (``model_ref`` or the stage's model)."""
    found = registry.resolve(model_ref or default_model_ref(stage, registry))
    card = registry.card(str(found))
    if card.stage is not stage:
        raise ModelStageMismatchError(
            f"model {card.ref} serves stage {card.stage.value}, not {stage.value}",
            model=card.ref,
            stage=stage.value,
        )
    return card


def check_inputs(
    stage: Stage, card: ModelCard, inputs: Sequence[bytes], max_pixels: int
) -> list[Predecoded]:
    """Decode each input and run the stage rule on the frame the model would analyse; returns
    the decoded inputs (an in-process job analyses them without decoding again).

    Raises:
        ImagingError, WrongStageError: with ``input_index`` in the error's context.
    """
    config = card.preprocess_config()
    decoded_inputs = []
    for index, data in enumerate(inputs):
        try:
            start = time.perf_counter()
            decoded = decode(data, max_pixels=max_pixels)
            ms = (time.perf_counter() - start) * 1000.0
            check_stage(stage, decoded, select_frame(decoded.frames, config.frame_policy))
        except BreastdxError as exc:
            exc.context["input_index"] = index
            if len(inputs) > 1:
                exc.message = f"input {index}: {exc.message}"
            raise
        decoded_inputs.append(Predecoded(decoded, round(ms, 3)))
    return decoded_inputs
