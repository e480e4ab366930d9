"""One input, checked once: decoded, its frame picked, its display image built, its stage rule run.

The submission check (``service.jobs.preflight``) and the pipeline share :func:`check_input`. In
process the job carries the :class:`CheckedInput` objects to the pipeline, so no image is
decoded, no frame picked and no display image built twice; a queue worker, in another process,
checks the stored bytes once more.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import service.inference.histopathology  # noqa: F401 - registers the stage's input rule
from imaging import decode
from imaging.preprocess import FramePolicy, select_frame
from imaging.record import DecodedImage
from models_registry.card import Stage
from service.inference.stages import check_stage


@dataclass(frozen=True, eq=False)
class CheckedInput:
    """An input that passed its stage rule, with what the pipeline needs of it."""

    decoded: DecodedImage
    frame_index: int  # the frame the model's frame policy picks
    display: np.ndarray  # that frame, (H, W) or (H, W, 3) float32 in [0, 1]
    warnings: tuple[str, ...]  # the stage rule's
    decode_ms: float  # decoding and the display transform
    check_ms: float  # the stage rule


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


def check_input(
    stage: Stage, source: bytes | Path, frame_policy: FramePolicy, max_pixels: int
) -> CheckedInput:
    """Decode ``source`` (at most ``max_pixels``), pick its frame, build that frame's display
    image and run the stage rule on it.

    Raises:
        ImagingError: the input cannot be decoded (or is no image, or too large).
        WrongStageError: the image does not fit the stage.
    """
    start = time.perf_counter()
    decoded = decode(source, max_pixels=max_pixels)
    frame_index = select_frame(decoded.frames, frame_policy)
    display = decoded.display(frame_index)  # (H, W) or (H, W, 3)
    decode_ms = _ms(start)
    start = time.perf_counter()
    warnings = check_stage(stage, decoded, frame_index, display)
    return CheckedInput(decoded, frame_index, display, tuple(warnings), decode_ms, _ms(start))
