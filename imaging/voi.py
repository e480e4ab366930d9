"""Display transform: stored values -> float32 in [0, 1], DICOM PS3.3 C.11.2.

Greyscale frames go through the Modality LUT (rescale slope/intercept), then the VOI LUT or
window (C.11.2.1.1, C.11.2.1.2), then MONOCHROME1 inversion. Without a VOI the value range is
used: 8-bit data by its nominal range (so a dark 8-bit image stays dark), deeper data by the
frame's minimum and maximum. Colour frames are scaled by their nominal range only; VOI applies
to greyscale alone. A frame without contrast (minimum equals maximum) displays as zeros.
"""

from __future__ import annotations

import numpy as np

from imaging.record import DecodedImage, VoiLut, Window


def window_linear(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """LINEAR window, PS3.3 C.11.2.1.2.1, output in [0, 1]; a width below 1 counts as 1."""
    width = max(float(width), 1.0)
    if width == 1.0:  # (w - 1) = 0: a step at c - 0.5
        return (values > center - 0.5).astype(np.float32)
    out = (values - (center - 0.5)) / (width - 1.0) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def window_linear_exact(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """LINEAR_EXACT window, PS3.3 C.11.2.1.3.2, output in [0, 1]; needs a width above 0."""
    if width <= 0:
        raise ValueError(f"LINEAR_EXACT needs a window width above 0, got {width}")
    out = (values - center) / width + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def window_sigmoid(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """SIGMOID window, PS3.3 C.11.2.1.3.1, output in (0, 1); needs a width above 0."""
    if width <= 0:
        raise ValueError(f"SIGMOID needs a window width above 0, got {width}")
    exponent = np.clip(-4.0 * (values - center) / width, -80.0, 80.0)  # no overflow warnings
    return (1.0 / (1.0 + np.exp(exponent))).astype(np.float32)


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Apply ``window`` with its VOI LUT Function; an unknown function falls back to LINEAR."""
    function = window.function.upper()
    if function == "SIGMOID" and window.width > 0:
        return window_sigmoid(values, window.center, window.width)
    if function == "LINEAR_EXACT" and window.width > 0:
        return window_linear_exact(values, window.center, window.width)
    return window_linear(values, window.center, window.width)


def apply_lut(values: np.ndarray, lut: VoiLut) -> np.ndarray:
    """Look values up in a VOI LUT, PS3.3 C.11.2.1.1; out-of-range inputs clamp to the ends."""
    if lut.table.size == 0:
        raise ValueError("the VOI LUT has no entries")
    index = np.rint(values) - lut.first_mapped
    index = np.clip(index, 0, lut.table.size - 1).astype(np.intp)
    top = float((1 << lut.bits) - 1) if lut.bits > 0 else float(lut.table.max() or 1)
    return np.clip(lut.table[index].astype(np.float32) / np.float32(top), 0.0, 1.0)


def scale_range(
    values: np.ndarray, low: float, high: float, *, in_place: bool = False
) -> np.ndarray:
    """Map ``[low, high]`` linearly to ``[0, 1]``; an empty range gives zeros.

    One output array and no temporaries: a 14000 x 14000 frame costs its float32 copy once,
    not four times. ``in_place`` reuses ``values`` itself (float32, owned by the caller).
    """
    if not (np.isfinite(low) and np.isfinite(high)) or high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    if in_place and values.dtype == np.float32:
        out = values
        out -= np.float32(low)
    else:
        out = values - np.float32(low)
    out /= np.float32(high - low)
    np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32, copy=False)


def nominal_range(dtype: np.dtype, bits_stored: int) -> tuple[int, int]:
    """The range of stored values that ``bits_stored`` bits allow, signed or not."""
    bits = max(1, min(int(bits_stored), dtype.itemsize * 8))
    if np.issubdtype(dtype, np.signedinteger):
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _grey_without_voi(image: DecodedImage, values: np.ndarray) -> np.ndarray | None:
    """The fallback range scaling, in place on ``values`` (the caller's own float32 copy);
    None when the frame has no contrast."""
    if image.metadata.bits_stored <= 8:
        low, high = nominal_range(image.raw.dtype, image.metadata.bits_stored)
        ends = np.array([low, high], dtype=np.float32)
        ends = ends * np.float32(image.rescale_slope) + np.float32(image.rescale_intercept)
        return scale_range(values, float(ends.min()), float(ends.max()), in_place=True)
    minimum, maximum = float(values.min()), float(values.max())
    if not maximum > minimum:
        return None
    return scale_range(values, minimum, maximum, in_place=True)


def apply_display_transform(image: DecodedImage, index: int = 0) -> np.ndarray:
    """One frame of ``image`` for display: float32 in [0, 1], ``(H, W)`` or ``(H, W, 3)``."""
    if image.is_colour:
        frame = image.frame(index)
        low, high = nominal_range(frame.dtype, image.metadata.bits_stored)
        return scale_range(frame.astype(np.float32), low, high, in_place=True)
    values = image.modality_values(index)  # a fresh float32 copy: scaled in place below
    voi = image.voi
    if isinstance(voi, VoiLut) and voi.table.size:
        out = apply_lut(values, voi)
    elif isinstance(voi, Window):
        out = apply_window(values, voi)
    else:
        fallback = _grey_without_voi(image, values)
        if fallback is None:
            return np.zeros(values.shape, dtype=np.float32)
        out = fallback
    if image.invert:
        np.subtract(np.float32(1.0), out, out=out)
    return np.ascontiguousarray(out, dtype=np.float32)
