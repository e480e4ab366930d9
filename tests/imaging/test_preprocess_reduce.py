"""Early reduction of very large frames in ``preprocess_decoded`` (issue 15, finding 2): shrunk by
an integer factor before the float32 display transform, with a geometry that still maps masks
back to the original size exactly."""

from __future__ import annotations

import tracemalloc

import numpy as np

from imaging.geometry import Resize
from imaging.preprocess import (
    REDUCE_ABOVE_PIXELS,
    PreprocessConfig,
    preprocess,
    preprocess_decoded,
    reduction_factor,
)
from imaging.raster import raster_record
from imaging.record import ImageFormat

CONFIG = PreprocessConfig(input_size=(64, 48), channels=1)


def _large(hw: tuple[int, int]) -> np.ndarray:
    rows = np.linspace(0, 40000, hw[0], dtype=np.float32)[:, None]
    cols = np.linspace(0, 20000, hw[1], dtype=np.float32)[None, :]
    return (rows + cols).astype(np.uint16)[np.newaxis]  # (1, H, W), a smooth ramp


def test_reduction_factor() -> None:
    assert reduction_factor((4096, 3328)) == 1  # a full-field mammogram is untouched
    assert reduction_factor((14000, 14000)) == 3
    assert reduction_factor((10, 10), limit=100) == 1
    assert reduction_factor((10, 11), limit=100) == 2


def test_large_frame_is_reduced_before_float32_and_maps_back_exactly() -> None:
    hw = (5000, 6000)  # 30 M pixels > REDUCE_ABOVE_PIXELS
    assert hw[0] * hw[1] > REDUCE_ABOVE_PIXELS
    decoded = raster_record(ImageFormat.PNG, _large(hw))
    tracemalloc.start()
    try:
        chw, geometry, index = preprocess_decoded(decoded, CONFIG)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    full_float32 = hw[0] * hw[1] * 4
    assert peak < full_float32 / 2, peak  # never one float32 copy at full size
    assert index == 0 and chw.shape == (1, 64, 48)
    assert geometry.original_hw == hw
    first = geometry.ops[0]
    assert isinstance(first, Resize) and first.from_hw == hw and first.to_hw == (2500, 3000)
    mask = np.ones(geometry.output_hw, np.uint8)
    assert geometry.to_original(mask).shape == hw  # masks come back at the original size
    reference, _ = preprocess(decoded.display(0), CONFIG)  # the full-size path
    assert np.abs(chw - reference).max() < 0.01


def test_frames_at_or_below_the_threshold_are_untouched() -> None:
    decoded = raster_record(ImageFormat.PNG, _large((300, 200)))
    chw, geometry, _ = preprocess_decoded(decoded, CONFIG)
    reference, expected = preprocess(decoded.display(0), CONFIG)
    assert np.array_equal(chw, reference) and geometry == expected


def test_a_frame_and_display_at_hand_give_the_same_input() -> None:
    """A caller that picked the frame and built its display image (the service's input check)
    gets what ``preprocess_decoded`` makes alone; a frame that is reduced still takes its
    display image from the reduced pixels."""
    for hw in ((300, 200), (5000, 6000)):
        decoded = raster_record(ImageFormat.PNG, _large(hw))
        alone, geometry, index = preprocess_decoded(decoded, CONFIG)
        display = decoded.display(0)
        at_hand = preprocess_decoded(decoded, CONFIG, frame_index=0, display=display)
        assert np.array_equal(at_hand[0], alone) and at_hand[1:] == (geometry, index)
        dark = preprocess_decoded(decoded, CONFIG, frame_index=0, display=np.zeros_like(display))
        reduced = hw[0] * hw[1] > REDUCE_ABOVE_PIXELS
        assert np.array_equal(dark[0], alone) == reduced  # used unless the frame is reduced
