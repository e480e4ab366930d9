"""The one preprocessing that training and serving share: display image -> model input.

``prepare`` does everything spatial (breast crop, canonical flip, resize or letterbox) and the
channel conversion, and returns the image at the model size in [0, 1] with the ``Geometry`` that
maps predictions back; ``normalise`` turns it into the ``(C, H, W)`` float32 array a network
takes. The parameters live in ``PreprocessConfig``, which the model card stores.

``preprocess_decoded`` reduces a very large frame early: above ``REDUCE_ABOVE_PIXELS`` pixels
the stored values are shrunk by an integer factor with area averaging (``cv2.INTER_AREA``)
before the float32 display transform, so that a 14000 x 14000 image is never copied as
float32 at full size. The reduction is the first ``Resize`` of the returned ``Geometry``, so
masks still map back to the original size exactly. Images at or below the threshold (every
mammogram, ultrasound and histopathology patch the models are trained on) are untouched.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Self

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from imaging.geometry import Crop, Flip, Geometry, Interpolation, Op, Pad, Resize
from imaging.mammo import breast_region, canonical_flip_needed, to_grey
from imaging.record import DecodedImage, Laterality

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet statistics, RGB
IMAGENET_STD = (0.229, 0.224, 0.225)
REDUCE_ABOVE_PIXELS = 24_000_000  # per frame; 6000 x 4000, above any full-field mammogram
_AREA_DTYPES = (np.uint8, np.uint16, np.int16, np.float32)  # cv2.INTER_AREA's types here


class ResizeMode(StrEnum):
    STRETCH = "stretch"  # each axis to the input size; aspect ratio not kept
    LETTERBOX = "letterbox"  # scale to fit, keep aspect ratio, pad the rest centred
    PAD = "pad"  # letterbox that never enlarges: a smaller image (an edge patch) is only padded


class Normalisation(StrEnum):
    UNIT = "unit"  # values stay in [0, 1]
    ZSCORE = "zscore"  # (x - mean[c]) / std[c], with the config's mean and std
    IMAGENET = "imagenet"  # z-score with IMAGENET_MEAN / IMAGENET_STD; needs 3 channels


class FramePolicy(StrEnum):
    FIRST = "first"
    MIDDLE = "middle"  # frames // 2
    LAST = "last"


class PreprocessConfig(BaseModel):
    """Everything that turns a display image into a model input; stored in the model card."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_size: tuple[int, int] = Field(description="(height, width) of the model input")
    channels: Literal[1, 3] = 3
    resize_mode: ResizeMode = ResizeMode.STRETCH
    crop_breast: bool = False  # mammography: crop to the breast bounding box
    mask_background: bool = True  # with crop_breast: zero pixels outside the breast mask
    canonical_orientation: bool = False  # mammography: chest wall on the left
    normalisation: Normalisation = Normalisation.UNIT
    mean: tuple[float, ...] | None = None  # zscore only, one per channel
    std: tuple[float, ...] | None = None  # zscore only, one per channel, > 0
    frame_policy: FramePolicy = FramePolicy.FIRST
    interpolation: Interpolation = Interpolation.AREA
    pad_value: float = Field(default=0.0, ge=0.0, le=1.0)  # letterbox/pad fill, before normalising

    @model_validator(mode="after")
    def _check(self) -> Self:
        if any(v < 1 for v in self.input_size):
            raise ValueError(f"input_size must be positive (height, width), got {self.input_size}")
        if self.normalisation == Normalisation.ZSCORE:
            for name, values in (("mean", self.mean), ("std", self.std)):
                if values is None or len(values) != self.channels:
                    raise ValueError(f"zscore needs {name} with one value per channel")
            if any(s <= 0 for s in self.std or ()):
                raise ValueError("zscore std values must be > 0")
        elif self.mean is not None or self.std is not None:
            raise ValueError("mean and std are given only with normalisation='zscore'")
        if self.normalisation == Normalisation.IMAGENET and self.channels != 3:
            raise ValueError("imagenet normalisation needs channels=3")
        return self

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel ``(mean, std)``, each ``(C,)`` float32 (0 and 1 for ``unit``)."""
        mean: tuple[float, ...]
        std: tuple[float, ...]
        if self.normalisation == Normalisation.IMAGENET:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        elif self.normalisation == Normalisation.ZSCORE:
            mean, std = self.mean or (), self.std or ()
        else:
            mean, std = (0.0,) * self.channels, (1.0,) * self.channels
        return np.asarray(mean, np.float32), np.asarray(std, np.float32)


@dataclass(frozen=True, eq=False)
class Prepared:
    """A model-size image before normalisation.

    Attributes:
        image: ``(H, W, C)`` float32 in [0, 1] at ``config.input_size``.
        geometry: original -> model input.
    """

    image: np.ndarray
    geometry: Geometry


def _check_display_image(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as float32, after checking it is ``(H, W)`` / ``(H, W, 3)`` in [0, 1]."""
    if not isinstance(image, np.ndarray) or not (
        image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)
    ):
        shape = getattr(image, "shape", None)
        raise ValueError(f"a display image must be (H, W) or (H, W, 3), got shape {shape}")
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"a display image must be float in [0, 1], got dtype {image.dtype}")
    if image.size == 0:
        raise ValueError("a display image must not be empty")
    low, high = float(image.min()), float(image.max())
    if not (low >= 0.0 and high <= 1.0):  # also rejects NaN
        raise ValueError(f"a display image must lie in [0, 1], got [{low}, {high}]")
    return image.astype(np.float32, copy=False)


def _fit_ops(in_hw: tuple[int, int], config: PreprocessConfig) -> list[Op]:
    """Resize (and pad) from ``in_hw`` to ``config.input_size``."""
    out_h, out_w = config.input_size
    if config.resize_mode == ResizeMode.STRETCH:
        return [Resize(in_hw, (out_h, out_w))]
    scale = min(out_h / in_hw[0], out_w / in_hw[1])
    if config.resize_mode == ResizeMode.PAD:
        scale = min(scale, 1.0)  # native pixels: shrink what is too large, never stretch
    new_h = min(out_h, max(1, round(in_hw[0] * scale)))
    new_w = min(out_w, max(1, round(in_hw[1] * scale)))
    top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
    pad = Pad(top, out_h - new_h - top, left, out_w - new_w - left, value=config.pad_value)
    return [Resize(in_hw, (new_h, new_w)), pad]


def _spatial_ops(
    image: np.ndarray, config: PreprocessConfig, laterality: Laterality
) -> tuple[np.ndarray, list[Op]]:
    """Breast crop / flip as configured: the (possibly masked, cropped) image and the ops so far.

    The returned image has had the crop applied, not the flip.
    """
    ops: list[Op] = []
    if not (config.crop_breast or config.canonical_orientation):
        return image, ops
    region = breast_region(image)
    if config.crop_breast:
        x, y, w, h = region.bbox
        ops.append(Crop(top=y, left=x, height=h, width=w))
        image = image[y : y + h, x : x + w]
        if config.mask_background:
            inside = region.mask[y : y + h, x : x + w]
            image = np.where(inside[..., None] if image.ndim == 3 else inside, image, 0)
    if config.canonical_orientation and canonical_flip_needed(region.mask, laterality):
        ops.append(Flip(horizontal=True))
    return image, ops


def prepare(
    image: np.ndarray, config: PreprocessConfig, *, laterality: Laterality = Laterality.UNKNOWN
) -> Prepared:
    """Display image (float32 [0, 1], ``(H, W)`` or ``(H, W, 3)``) -> model-size ``Prepared``.

    Order: RGB -> grey (BT.601 luma) when ``channels=1``; breast crop and canonical flip when
    configured; resize (stretch, letterbox, or pad: letterbox without enlarging); grey -> 3
    channels by repetition; clip to [0, 1].
    """
    image = _check_display_image(image)  # (H, W) or (H, W, 3)
    original_hw = (image.shape[0], image.shape[1])
    if config.channels == 1 and image.ndim == 3:
        image = to_grey(image)  # (H, W)
    cropped, ops = _spatial_ops(image, config, laterality)
    crop_ops = [op for op in ops if isinstance(op, Crop)]
    rest = Geometry(cropped.shape[:2], tuple(op for op in ops if not isinstance(op, Crop)))
    rest = rest.then(*_fit_ops(rest.output_hw, config))
    out = rest.apply_image(cropped, config.interpolation)  # (h, w) or (h, w, 3)
    if out.ndim == 2:
        out = out[:, :, None]  # (h, w, 1)
    if config.channels == 3 and out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)  # (h, w, 3)
    np.clip(out, 0.0, 1.0, out=out)
    geometry = Geometry(original_hw, (*crop_ops, *rest.ops))
    return Prepared(image=np.ascontiguousarray(out, dtype=np.float32), geometry=geometry)


def normalise(image_hwc: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """``(H, W, C)`` in [0, 1] at the input size -> ``(C, H, W)`` float32, normalised."""
    expected = (*config.input_size, config.channels)
    if image_hwc.shape != expected:
        raise ValueError(
            f"normalise expects an (H, W, C) image of shape {expected}, got {image_hwc.shape}"
        )
    mean, std = config.statistics()  # (C,), (C,)
    chw = np.transpose(image_hwc.astype(np.float32, copy=False), (2, 0, 1))  # (C, H, W)
    if config.normalisation != Normalisation.UNIT:
        chw = (chw - mean[:, None, None]) / std[:, None, None]
    return np.ascontiguousarray(chw, dtype=np.float32)


def preprocess(
    image: np.ndarray, config: PreprocessConfig, *, laterality: Laterality = Laterality.UNKNOWN
) -> tuple[np.ndarray, Geometry]:
    """``prepare`` + ``normalise``: display image -> ``((C, H, W) float32, Geometry)``."""
    prepared = prepare(image, config, laterality=laterality)
    return normalise(prepared.image, config), prepared.geometry


def select_frame(frames: int, policy: FramePolicy) -> int:
    """Index of the frame ``policy`` picks among ``frames`` (>= 1)."""
    if frames < 1:
        raise ValueError(f"an image must have at least one frame, got {frames}")
    if policy == FramePolicy.MIDDLE:
        return frames // 2
    if policy == FramePolicy.LAST:
        return frames - 1
    return 0


def reduction_factor(hw: tuple[int, int], limit: int = REDUCE_ABOVE_PIXELS) -> int:
    """The smallest integer ``k`` with ``(H / k) * (W / k) <= limit``; 1 at or below it."""
    pixels = hw[0] * hw[1]
    return 1 if pixels <= limit else math.ceil(math.sqrt(pixels / limit))


def reduce_frame(
    decoded: DecodedImage, index: int, limit: int = REDUCE_ABOVE_PIXELS
) -> tuple[DecodedImage, Resize | None]:
    """Frame ``index`` alone, shrunk by ``reduction_factor`` before any float conversion.

    Returns:
        ``(record, resize)``: a one-frame record (the same object's frame when no reduction is
        needed, then ``resize`` is None) and the ``Resize`` from the original size.
    """
    frame = decoded.frame(index)  # (H, W) or (H, W, 3), stored values
    hw = (int(frame.shape[0]), int(frame.shape[1]))
    factor = reduction_factor(hw, limit)
    if factor == 1 or frame.dtype.type not in _AREA_DTYPES:
        return decoded, None
    small_hw = (max(1, round(hw[0] / factor)), max(1, round(hw[1] / factor)))
    small = cv2.resize(frame, (small_hw[1], small_hw[0]), interpolation=cv2.INTER_AREA)
    metadata = decoded.metadata.model_copy(
        update={"rows": small_hw[0], "columns": small_hw[1], "frames": 1}
    )
    record = dataclasses.replace(decoded, metadata=metadata, raw=small[np.newaxis])
    return record, Resize(hw, small_hw)


def preprocess_decoded(
    decoded: DecodedImage,
    config: PreprocessConfig,
    *,
    frame_index: int | None = None,
    display: np.ndarray | None = None,
) -> tuple[np.ndarray, Geometry, int]:
    """Pick the frame, take its display image and preprocess it with the record's laterality.

    A frame above ``REDUCE_ABOVE_PIXELS`` is reduced first (``reduce_frame``); the geometry
    then starts with that ``Resize`` and still maps back to the original size. A caller that
    has picked the frame (``frame_index``) and built its display image (``display``) passes
    them; a reduced frame still takes its display image from the reduced pixels.

    Returns:
        ``(chw, geometry, frame_index)``: ``(C, H, W)`` float32 input, geometry, frame used.
    """
    index = (
        select_frame(decoded.frames, config.frame_policy) if frame_index is None else frame_index
    )
    source, resize = reduce_frame(decoded, index)
    laterality = decoded.metadata.laterality
    if display is None or resize is not None:
        display = source.display(0 if resize is not None else index)  # (h, w) or (h, w, 3)
    chw, geometry = preprocess(display, config, laterality=laterality)
    if resize is not None:
        geometry = Geometry(resize.from_hw, (resize, *geometry.ops))
    return chw, geometry, index


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float in [0, 1] -> uint8 (round half to even of ``x * 255``, clipped), for augmenters."""
    return np.clip(np.rint(np.asarray(image, np.float32) * 255.0), 0, 255).astype(np.uint8)


def from_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1] (``x / 255``)."""
    if image.dtype != np.uint8:
        raise ValueError(f"from_uint8 expects uint8, got {image.dtype}")
    return image.astype(np.float32) / np.float32(255.0)
