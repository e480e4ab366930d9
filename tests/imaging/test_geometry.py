"""Geometry: validation, serialisation, point mapping and the mask round-trip properties."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imaging.errors import InvalidGeometryError
from imaging.geometry import (
    Crop,
    Flip,
    Geometry,
    Interpolation,
    Op,
    Pad,
    Resize,
    resize_array,
)

FAST = settings(max_examples=150, deadline=None)


def _example() -> Geometry:
    return Geometry(
        (10, 12), (Crop(1, 2, 8, 8), Flip(), Resize((8, 8), (4, 4)), Pad(0, 0, 1, 1, value=0.5))
    )


# --- validation --------------------------------------------------------------------------------


def test_crop_outside_the_image_is_rejected_with_the_rule() -> None:
    with pytest.raises(InvalidGeometryError, match="must lie inside the 10x12 image"):
        Geometry((10, 12), (Crop(5, 5, 6, 6),))


@pytest.mark.parametrize(
    "make",
    [
        lambda: Crop(-1, 0, 2, 2),
        lambda: Crop(0, 0, 0, 2),
        lambda: Pad(0, -1, 0, 0),
        lambda: Resize((0, 4), (2, 2)),
        lambda: Resize((4, 4), (2, 2.5)),  # type: ignore[arg-type]
        lambda: Geometry((0, 3)),
        lambda: Crop(0.5, 0, 2, 2),  # type: ignore[arg-type]
        lambda: Flip("yes"),  # type: ignore[arg-type]
        lambda: Pad(0, 0, 0, 0, value=float("nan")),
        lambda: Geometry.from_dict({"ops": []}),
        lambda: Geometry.from_dict({"original_hw": [4, 4], "ops": [["crop"]]}),
    ],
)
def test_invalid_parameters_are_rejected(make: object) -> None:
    with pytest.raises(InvalidGeometryError):
        make()  # type: ignore[operator]


def test_resize_must_start_from_the_current_size() -> None:
    with pytest.raises(InvalidGeometryError, match=r"resize from \(8, 8\)"):
        Geometry((10, 12), (Resize((8, 8), (4, 4)),))


def test_arrays_of_the_wrong_size_are_rejected() -> None:
    geometry = _example()
    with pytest.raises(InvalidGeometryError, match="expects 10x12"):
        geometry.apply_image(np.zeros((10, 11), np.float32))
    with pytest.raises(InvalidGeometryError, match="expects 4x6"):
        geometry.to_original(np.zeros((4, 4), np.float32))


def test_linear_resize_of_a_bool_mask_is_refused() -> None:
    with pytest.raises(ValueError, match="numeric"):
        resize_array(np.zeros((4, 4), bool), (8, 8), Interpolation.LINEAR)


# --- application -------------------------------------------------------------------------------


def test_apply_image_grey_and_rgb_with_pad_value() -> None:
    geometry = _example()
    assert geometry.output_hw == (4, 6)
    grey = geometry.apply_image(np.ones((10, 12), np.float32))  # (4, 6)
    rgb = geometry.apply_image(np.ones((10, 12, 3), np.float32))  # (4, 6, 3)
    assert grey.shape == (4, 6) and rgb.shape == (4, 6, 3)
    assert np.all(grey[:, 0] == 0.5) and np.all(grey[:, 1:5] == 1.0)
    mask = geometry.apply_mask(np.ones((10, 12), np.uint8))
    assert mask.dtype == np.uint8 and np.all(mask[:, 0] == 0)  # masks are padded with 0


def test_to_original_pastes_into_a_zero_canvas() -> None:
    geometry = _example()
    back = geometry.to_original(np.ones((4, 6), np.float32), interpolation=Interpolation.LINEAR)
    expected = np.zeros((10, 12), np.float32)
    expected[1:9, 2:10] = 1.0
    np.testing.assert_array_equal(back, expected)


def test_nearest_resize_is_integer_exact() -> None:
    array = np.arange(12).reshape(3, 4)
    up = resize_array(array, (6, 8), Interpolation.NEAREST)
    np.testing.assert_array_equal(up, np.kron(array, np.ones((2, 2), int)))
    np.testing.assert_array_equal(resize_array(up, (3, 4), Interpolation.NEAREST), array)


# --- serialisation -----------------------------------------------------------------------------


def test_dict_round_trip_through_json() -> None:
    geometry = _example()
    data = json.loads(json.dumps(geometry.to_dict()))
    assert data["ops"][0] == {"op": "crop", "top": 1, "left": 2, "height": 8, "width": 8}
    assert Geometry.from_dict(data) == geometry


def test_unknown_operation_lists_the_valid_ones() -> None:
    with pytest.raises(InvalidGeometryError, match="valid: crop, flip, resize, pad"):
        Geometry.from_dict({"original_hw": [4, 4], "ops": [{"op": "rotate", "angle": 90}]})
    with pytest.raises(InvalidGeometryError, match="bad parameters for crop"):
        Geometry.from_dict({"original_hw": [4, 4], "ops": [{"op": "crop", "top": 0}]})


def test_inconsistent_output_size_is_rejected() -> None:
    data = _example().to_dict() | {"output_hw": [5, 5]}
    with pytest.raises(InvalidGeometryError, match="does not match"):
        Geometry.from_dict(data)


# --- point mapping -----------------------------------------------------------------------------


def test_numpy_integers_are_accepted_and_stored_as_int() -> None:
    crop = Crop(np.int64(1), np.int32(2), np.int64(3), np.int64(4))  # type: ignore[arg-type]
    assert type(crop.top) is int and json.dumps(Geometry((8, 8), (crop,)).to_dict())


def test_map_points_example() -> None:
    # model (0, 0) lies in the left pad: x -1 -> resize x2 -> -1.5 -> flip in 8 -> 8.5 -> +2
    np.testing.assert_allclose(_example().map_points([[0, 0], [5, 3]]), [[10.5, 1.5], [0.5, 7.5]])


@st.composite
def _no_resize_geometry(draw: st.DrawFn) -> tuple[Geometry, int, int]:
    h, w = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    top, left = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
    ch, cw = draw(st.integers(1, h - top)), draw(st.integers(1, w - left))
    ops: list[Op] = [Crop(top, left, ch, cw), Flip(draw(st.booleans()))]
    ops.append(Pad(*(draw(st.integers(0, 3)) for _ in range(4))))
    row, col = draw(st.integers(top, top + ch - 1)), draw(st.integers(left, left + cw - 1))
    return Geometry((h, w), tuple(ops)), row, col


@FAST
@given(_no_resize_geometry())
def test_map_points_follows_a_pixel_through_crop_flip_and_pad(
    case: tuple[Geometry, int, int],
) -> None:
    geometry, row, col = case
    mask = np.zeros(geometry.original_hw, bool)
    mask[row, col] = True
    (r, c), *_ = np.argwhere(geometry.apply_mask(mask))
    np.testing.assert_array_equal(geometry.map_points([[col, row]], inverse=False), [[c, r]])
    np.testing.assert_array_equal(geometry.map_points([[c, r]]), [[col, row]])


@FAST
@given(st.integers(1, 50), st.integers(1, 50), st.integers(1, 50), st.integers(1, 50))
def test_map_points_forward_then_inverse_is_identity(a: int, b: int, c: int, d: int) -> None:
    geometry = Geometry((a, b), (Flip(False), Resize((a, b), (c, d)), Pad(1, 2, 3, 4)))
    points = np.array([[0.0, 0.0], [b - 1.0, a - 1.0], [b / 3, a / 2]])
    there = geometry.map_points(points, inverse=False)
    np.testing.assert_allclose(geometry.map_points(there), points, atol=1e-9)


# --- round-trip properties ---------------------------------------------------------------------


def _mask(draw: st.DrawFn, hw: tuple[int, int]) -> np.ndarray:
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).random(hw) < draw(st.sampled_from([0.1, 0.5, 0.9]))


def _optional_flip(draw: st.DrawFn) -> list[Op]:
    choice = draw(st.sampled_from([None, True, False]))
    return [] if choice is None else [Flip(choice)]


@st.composite
def _integer_scale_case(draw: st.DrawFn) -> tuple[Geometry, np.ndarray]:
    """Crop, flip?, integer up/down/identity resize, flip?, pad?; mask drawn in the original."""
    k, up = draw(st.integers(1, 3)), draw(st.booleans())
    block = 1 if up else k  # a downscale keeps a mask exactly only if it is constant per block
    small = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    crop_hw = (small[0] * block, small[1] * block)
    to_hw = (crop_hw[0] * k, crop_hw[1] * k) if up else small
    top, left = draw(st.integers(0, 5)), draw(st.integers(0, 5))
    hw = (top + crop_hw[0] + draw(st.integers(0, 5)), left + crop_hw[1] + draw(st.integers(0, 5)))
    ops: list[Op] = [Crop(top, left, *crop_hw), *_optional_flip(draw)]
    ops += [Resize(crop_hw, to_hw), *_optional_flip(draw)]
    if draw(st.booleans()):
        ops.append(Pad(*(draw(st.integers(0, 4)) for _ in range(4))))
    inner = np.kron(_mask(draw, small), np.ones((block, block), bool))  # crop_hw
    mask = np.zeros(hw, bool)
    mask[top : top + crop_hw[0], left : left + crop_hw[1]] = inner
    return Geometry(hw, tuple(ops)), mask


@FAST
@given(_integer_scale_case())
def test_original_mask_survives_integer_scale_round_trip(case: tuple[Geometry, np.ndarray]) -> None:
    geometry, mask = case
    back = geometry.to_original(geometry.apply_mask(mask), interpolation=Interpolation.NEAREST)
    np.testing.assert_array_equal(back, mask)


@st.composite
def _model_mask_case(draw: st.DrawFn) -> tuple[Geometry, np.ndarray]:
    """Any resize to a grid no finer than the content; mask drawn on the model input content."""
    content = (draw(st.integers(1, 60)), draw(st.integers(1, 60)))
    to_hw = (draw(st.integers(1, content[0])), draw(st.integers(1, content[1])))
    top, left = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    hw = (top + content[0] + draw(st.integers(0, 6)), left + content[1] + draw(st.integers(0, 6)))
    pad = Pad(*(draw(st.integers(0, 4)) for _ in range(4)))
    ops: list[Op] = [Crop(top, left, *content), *_optional_flip(draw), Resize(content, to_hw)]
    ops += [*_optional_flip(draw), pad]
    model_mask = np.zeros((to_hw[0] + pad.top + pad.bottom, to_hw[1] + pad.left + pad.right), bool)
    model_mask[pad.top : pad.top + to_hw[0], pad.left : pad.left + to_hw[1]] = _mask(draw, to_hw)
    return Geometry(hw, tuple(ops)), model_mask


@FAST
@given(_model_mask_case())
def test_model_mask_survives_original_and_back(case: tuple[Geometry, np.ndarray]) -> None:
    geometry, model_mask = case
    original = geometry.to_original(model_mask, interpolation=Interpolation.NEAREST)
    np.testing.assert_array_equal(geometry.apply_mask(original), model_mask)
