"""The record of every spatial operation between an original image and the model input.

A ``Geometry`` holds the original size and an ordered tuple of operations (``Crop``, ``Flip``,
``Resize``, ``Pad``). It applies them to an image or a mask and inverts them, so that a mask
predicted on the model input lands on the original pixels, and it serialises to JSON so that a
result can state how it was produced.

Conventions:
    * Sizes are ``(height, width)``; points are ``[x, y]`` in pixel-centre coordinates (pixel
      ``(row, col)`` has its centre at ``x = col, y = row``), the convention of OpenCV's
      ``cv2.resize`` and ``cv2.findContours``.
    * Nearest-neighbour resizing samples the source pixel whose centre is nearest to the target
      pixel's centre, ``src = floor((dst + 0.5) * n_src / n_dst)``, computed in integers so that
      it is exact and the same on every machine. With it, downscaling then upscaling back returns
      every pixel of the small grid unchanged, and an integer upscale is exact pixel replication.
    * Other interpolations use OpenCV (half-pixel centres as well).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, ClassVar

import cv2
import numpy as np

from imaging.errors import InvalidGeometryError

HW = tuple[int, int]


class Interpolation(StrEnum):
    """Resampling kernels; ``nearest`` is the exact integer rule described in the module doc."""

    NEAREST = "nearest"
    LINEAR = "linear"
    AREA = "area"
    CUBIC = "cubic"


_CV2_INTERPOLATION = {
    Interpolation.LINEAR: cv2.INTER_LINEAR,
    Interpolation.AREA: cv2.INTER_AREA,
    Interpolation.CUBIC: cv2.INTER_CUBIC,
}


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _check_hw(name: str, hw: object) -> HW:
    if not (
        isinstance(hw, Sequence | np.ndarray)
        and len(hw) == 2
        and all(_is_int(v) and v >= 1 for v in hw)
    ):
        raise InvalidGeometryError(
            f"{name} must be two positive integers (height, width), got {hw!r}"
        )
    return int(hw[0]), int(hw[1])


def _check_offsets(op: object, names: Sequence[str]) -> None:
    """Each named field must be an integer >= 0; stored as a plain ``int``."""
    for name in names:
        value = getattr(op, name)
        if not _is_int(value) or value < 0:
            raise InvalidGeometryError(
                f"{type(op).__name__}.{name} must be an integer >= 0, got {value!r}"
            )
        object.__setattr__(op, name, int(value))


def _nearest_index(n_src: int, n_dst: int) -> np.ndarray:
    """Source index of each target pixel: ``floor((dst + 0.5) * n_src / n_dst)``, exact."""
    dst = np.arange(n_dst, dtype=np.int64)
    return ((2 * dst + 1) * n_src) // (2 * n_dst)


def resize_array(array: np.ndarray, to_hw: HW, interpolation: Interpolation) -> np.ndarray:
    """Resize ``(H, W)`` or ``(H, W, C)`` to ``to_hw``; nearest keeps any dtype (bool included)."""
    interpolation = Interpolation(interpolation)
    h, w = array.shape[:2]
    if (h, w) == tuple(to_hw):
        return array.copy()
    if interpolation == Interpolation.NEAREST:
        rows = _nearest_index(h, to_hw[0])
        cols = _nearest_index(w, to_hw[1])
        return array[rows[:, None], cols[None, :]]
    if array.dtype == np.bool_:
        raise ValueError(f"{interpolation.value} interpolation needs a numeric array, not bool")
    flags = _CV2_INTERPOLATION[interpolation]
    out = cv2.resize(np.ascontiguousarray(array), (to_hw[1], to_hw[0]), interpolation=flags)
    if array.ndim == 3 and out.ndim == 2:  # cv2 drops a single channel axis
        out = out[:, :, None]
    return out


@dataclass(frozen=True)
class Crop:
    """Keep rows ``top:top+height`` and columns ``left:left+width``."""

    kind: ClassVar[str] = "crop"
    top: int
    left: int
    height: int
    width: int

    def __post_init__(self) -> None:
        _check_offsets(self, ("top", "left", "height", "width"))
        if self.height < 1 or self.width < 1:
            raise InvalidGeometryError(
                f"a crop must be at least 1x1, got {self.height}x{self.width}"
            )

    def validate(self, in_hw: HW) -> None:
        if self.top + self.height > in_hw[0] or self.left + self.width > in_hw[1]:
            raise InvalidGeometryError(
                f"crop rows {self.top}:{self.top + self.height}, columns "
                f"{self.left}:{self.left + self.width} must lie inside the {in_hw[0]}x{in_hw[1]} "
                "image it is applied to"
            )

    def output_hw(self, in_hw: HW) -> HW:
        return self.height, self.width

    def forward(self, array: np.ndarray, interpolation: Interpolation) -> np.ndarray:
        return array[self.top : self.top + self.height, self.left : self.left + self.width]

    def inverse(self, array: np.ndarray, in_hw: HW, interpolation: Interpolation) -> np.ndarray:
        canvas = np.zeros(in_hw + array.shape[2:], dtype=array.dtype)  # outside the crop: 0
        canvas[self.top : self.top + self.height, self.left : self.left + self.width] = array
        return canvas

    def map_points(self, points: np.ndarray, in_hw: HW, inverse: bool) -> np.ndarray:
        sign = 1.0 if inverse else -1.0
        return points + sign * np.array([self.left, self.top], dtype=np.float64)


@dataclass(frozen=True)
class Flip:
    """Mirror left-right (``horizontal=True``) or top-bottom."""

    kind: ClassVar[str] = "flip"
    horizontal: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.horizontal, bool | np.bool_):
            raise InvalidGeometryError(f"Flip.horizontal must be a bool, got {self.horizontal!r}")
        object.__setattr__(self, "horizontal", bool(self.horizontal))

    def validate(self, in_hw: HW) -> None:
        return None

    def output_hw(self, in_hw: HW) -> HW:
        return in_hw

    def forward(self, array: np.ndarray, interpolation: Interpolation) -> np.ndarray:
        return array[:, ::-1] if self.horizontal else array[::-1]

    def inverse(self, array: np.ndarray, in_hw: HW, interpolation: Interpolation) -> np.ndarray:
        return self.forward(array, interpolation)

    def map_points(self, points: np.ndarray, in_hw: HW, inverse: bool) -> np.ndarray:
        out = points.copy()
        axis, size = (0, in_hw[1]) if self.horizontal else (1, in_hw[0])
        out[:, axis] = (size - 1) - points[:, axis]
        return out


@dataclass(frozen=True)
class Resize:
    """Resample from ``from_hw`` to ``to_hw`` (each axis independently)."""

    kind: ClassVar[str] = "resize"
    from_hw: HW
    to_hw: HW

    def __post_init__(self) -> None:
        object.__setattr__(self, "from_hw", _check_hw("Resize.from_hw", self.from_hw))
        object.__setattr__(self, "to_hw", _check_hw("Resize.to_hw", self.to_hw))

    def validate(self, in_hw: HW) -> None:
        if tuple(in_hw) != self.from_hw:
            raise InvalidGeometryError(
                f"a resize from {self.from_hw} must be applied to an image of that size, "
                f"got {tuple(in_hw)}"
            )

    def output_hw(self, in_hw: HW) -> HW:
        return self.to_hw

    def forward(self, array: np.ndarray, interpolation: Interpolation) -> np.ndarray:
        return resize_array(array, self.to_hw, interpolation)

    def inverse(self, array: np.ndarray, in_hw: HW, interpolation: Interpolation) -> np.ndarray:
        return resize_array(array, self.from_hw, interpolation)

    def map_points(self, points: np.ndarray, in_hw: HW, inverse: bool) -> np.ndarray:
        scale = np.array(
            [self.to_hw[1] / self.from_hw[1], self.to_hw[0] / self.from_hw[0]], dtype=np.float64
        )
        if inverse:
            scale = 1.0 / scale
        return (points + 0.5) * scale - 0.5


@dataclass(frozen=True)
class Pad:
    """Add constant borders (letterboxing); ``value`` fills images, masks get 0."""

    kind: ClassVar[str] = "pad"
    top: int
    bottom: int
    left: int
    right: int
    value: float = 0.0

    def __post_init__(self) -> None:
        _check_offsets(self, ("top", "bottom", "left", "right"))
        if not np.isfinite(self.value):
            raise InvalidGeometryError(f"Pad.value must be finite, got {self.value}")

    def validate(self, in_hw: HW) -> None:
        return None

    def output_hw(self, in_hw: HW) -> HW:
        return in_hw[0] + self.top + self.bottom, in_hw[1] + self.left + self.right

    def forward(self, array: np.ndarray, interpolation: Interpolation) -> np.ndarray:
        fill = self.value if np.issubdtype(array.dtype, np.floating) else 0
        canvas = np.full(self.output_hw(array.shape[:2]) + array.shape[2:], fill, array.dtype)
        h, w = array.shape[:2]
        canvas[self.top : self.top + h, self.left : self.left + w] = array
        return canvas

    def inverse(self, array: np.ndarray, in_hw: HW, interpolation: Interpolation) -> np.ndarray:
        return array[self.top : self.top + in_hw[0], self.left : self.left + in_hw[1]]

    def map_points(self, points: np.ndarray, in_hw: HW, inverse: bool) -> np.ndarray:
        sign = -1.0 if inverse else 1.0
        return points + sign * np.array([self.left, self.top], dtype=np.float64)


Op = Crop | Flip | Resize | Pad
OP_TYPES: dict[str, type[Op]] = {cls.kind: cls for cls in (Crop, Flip, Resize, Pad)}


def _check_array(array: np.ndarray, hw: HW, role: str) -> None:
    if not isinstance(array, np.ndarray) or array.ndim not in (2, 3):
        raise InvalidGeometryError(f"{role} must be an (H, W) or (H, W, C) array")
    if array.shape[:2] != hw:
        raise InvalidGeometryError(
            f"{role} of size {array.shape[0]}x{array.shape[1]} does not fit this geometry, "
            f"which expects {hw[0]}x{hw[1]}"
        )


@dataclass(frozen=True)
class Geometry:
    """Original size plus the ordered spatial operations that lead to the model input.

    Validated on construction: each operation must fit the size the previous ones produce.
    """

    original_hw: HW
    ops: tuple[Op, ...] = ()

    def __post_init__(self) -> None:
        hw = _check_hw("Geometry.original_hw", self.original_hw)
        object.__setattr__(self, "original_hw", hw)
        object.__setattr__(self, "ops", tuple(self.ops))
        shapes = [hw]
        for op in self.ops:
            if not isinstance(op, Crop | Flip | Resize | Pad):
                raise InvalidGeometryError(f"unknown geometry operation {op!r}")
            op.validate(hw)
            hw = op.output_hw(hw)
            shapes.append(hw)
        object.__setattr__(self, "_shapes", tuple(shapes))

    @property
    def output_hw(self) -> HW:
        """Size after every operation: the model input size."""
        shapes: tuple[HW, ...] = self.__dict__["_shapes"]
        return shapes[-1]

    def _steps(self) -> list[tuple[Op, HW]]:
        """Each operation with the size it is applied to."""
        return list(zip(self.ops, self.__dict__["_shapes"][:-1], strict=True))

    def then(self, *ops: Op) -> Geometry:
        """A new geometry with ``ops`` appended."""
        return Geometry(self.original_hw, self.ops + ops)

    def apply_image(
        self, image: np.ndarray, interpolation: Interpolation = Interpolation.LINEAR
    ) -> np.ndarray:
        """Original ``(H, W[, C])`` -> model input ``(h, w[, C])``."""
        _check_array(image, self.original_hw, "an image")
        for op in self.ops:
            image = op.forward(image, interpolation)
        return np.ascontiguousarray(image)

    def apply_mask(self, mask: np.ndarray) -> np.ndarray:
        """Original mask -> model-input mask, nearest neighbour, dtype kept."""
        return self.apply_image(mask, Interpolation.NEAREST)

    def to_original(
        self, array: np.ndarray, *, interpolation: Interpolation = Interpolation.NEAREST
    ) -> np.ndarray:
        """Model-input mask or probability map -> original size, inverting ops in reverse.

        Resizes back with ``interpolation``, undoes flips, drops padding and pastes crops into a
        zero canvas. Use ``nearest`` for masks and ``linear`` for probability maps.
        """
        _check_array(array, self.output_hw, "a model-size array")
        for op, in_hw in reversed(self._steps()):
            array = op.inverse(array, in_hw, interpolation)
        return np.ascontiguousarray(array)

    def map_points(
        self, points: np.ndarray | Sequence[Sequence[float]], inverse: bool = True
    ) -> np.ndarray:
        """Map ``[x, y]`` points, ``(N, 2)``: model input -> original (or the reverse).

        Points in the padding map outside the original image; the caller clips if needed.
        """
        pts = np.asarray(points, dtype=np.float64)
        if pts.size % 2:
            raise ValueError(f"points must be [x, y] pairs, got shape {pts.shape}")
        pts = pts.reshape(-1, 2)  # (N, 2)
        steps = self._steps()
        for op, in_hw in reversed(steps) if inverse else steps:
            pts = op.map_points(pts, in_hw, inverse)
        return pts

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"original_hw", "output_hw", "ops": [{"op": kind, ...}]}``."""
        ops = []
        for op in self.ops:
            entry: dict[str, Any] = {"op": op.kind}
            for f in fields(op):
                value = getattr(op, f.name)
                entry[f.name] = list(value) if isinstance(value, tuple) else value
            ops.append(entry)
        return {
            "original_hw": list(self.original_hw),
            "output_hw": list(self.output_hw),
            "ops": ops,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Geometry:
        """Inverse of ``to_dict``; an unknown operation lists the valid ones."""
        ops = tuple(_op_from_dict(entry) for entry in data.get("ops", []))
        geometry = cls(data.get("original_hw"), ops)  # type: ignore[arg-type]  # checked there
        if "output_hw" in data and tuple(data["output_hw"]) != geometry.output_hw:
            raise InvalidGeometryError(
                f"output_hw {data['output_hw']} does not match the operations, "
                f"which produce {list(geometry.output_hw)}"
            )
        return geometry


def _op_from_dict(entry: Mapping[str, Any]) -> Op:
    """One ``{"op": kind, **params}`` entry; an unknown kind lists the valid ones."""
    if not isinstance(entry, Mapping):
        raise InvalidGeometryError(f"a geometry operation must be a mapping, got {entry!r}")
    params = dict(entry)
    kind = params.pop("op", None)
    if kind not in OP_TYPES:
        raise InvalidGeometryError(
            f"unknown geometry operation {kind!r}; valid: {', '.join(OP_TYPES)}"
        )
    try:
        return OP_TYPES[kind](**params)
    except TypeError as exc:
        raise InvalidGeometryError(f"bad parameters for {kind}: {exc}") from exc
