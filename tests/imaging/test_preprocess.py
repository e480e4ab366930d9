"""Shared preprocessing: config validation, prepare / normalise, decoded records, golden outputs.

The golden values at the end were computed once with ``golden_summary`` and committed; to
regenerate them after an intended change, run ``.venv/bin/python -m tests.imaging.test_preprocess``
and paste its output into ``GOLDEN``, saying in the commit why the model input changed.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from imaging.geometry import Crop, Flip, Geometry, Pad, Resize
from imaging.preprocess import (
    FramePolicy,
    PreprocessConfig,
    from_uint8,
    normalise,
    prepare,
    preprocess,
    preprocess_decoded,
    select_frame,
    to_uint8,
)
from imaging.record import DecodedImage, ImageFormat, ImageMetadata, Laterality
from tests.imaging.test_mammo import synthetic_mammogram


def _config(**overrides: Any) -> PreprocessConfig:
    return PreprocessConfig.model_validate({"input_size": (32, 24)} | overrides)


def _rgb(h: int = 90, w: int = 120) -> np.ndarray:
    """A smooth deterministic RGB image, ``(h, w, 3)`` float32 in [0, 1]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    grey = 0.5 + 0.25 * np.sin(xx / 7) * np.cos(yy / 11) + 0.2 * xx / w - 0.1 * yy / h
    return np.clip(np.stack([grey, grey**2, np.sqrt(grey)], axis=2), 0, 1).astype(np.float32)


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"colour": True}, "Extra inputs"),
        ({"channels": 2}, "channels"),
        ({"input_size": (0, 24)}, "input_size must be positive"),
        ({"normalisation": "zscore", "mean": [0.5], "std": [0.2]}, "one value per channel"),
        ({"normalisation": "zscore", "mean": [0.5] * 3, "std": [0.2, 0, 1]}, "std values must be"),
        ({"mean": [0.5] * 3, "std": [0.2] * 3}, "only with normalisation='zscore'"),
        ({"normalisation": "imagenet", "channels": 1}, "needs channels=3"),
        ({"resize_mode": "crop"}, "stretch"),
    ],
)
def test_invalid_configs_state_the_rule(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _config(**overrides)


def test_config_is_frozen_and_round_trips_through_json() -> None:
    config = _config(normalisation="zscore", mean=[0.1, 0.2, 0.3], std=[1, 2, 3])
    assert PreprocessConfig.model_validate_json(config.model_dump_json()) == config
    with pytest.raises(ValidationError):
        config.channels = 1  # type: ignore[misc]


# --- prepare --------------------------------------------------------------------------------------


def test_stretch_gives_the_input_size_and_a_resize() -> None:
    prepared = prepare(_rgb(), _config())
    assert prepared.image.shape == (32, 24, 3) and prepared.image.dtype == np.float32
    assert prepared.geometry == Geometry((90, 120), (Resize((90, 120), (32, 24)),))


def test_letterbox_keeps_the_aspect_ratio_and_pads_centred() -> None:
    prepared = prepare(_rgb(), _config(resize_mode="letterbox", pad_value=0.25))
    assert prepared.geometry.ops == (Resize((90, 120), (18, 24)), Pad(7, 7, 0, 0, value=0.25))
    assert np.all(prepared.image[:7] == 0.25) and np.all(prepared.image[-7:] == 0.25)


def test_grey_is_repeated_and_rgb_becomes_bt601_luma() -> None:
    grey = prepare(_rgb()[:, :, 0], _config()).image  # (32, 24, 3)
    np.testing.assert_array_equal(grey[:, :, 0], grey[:, :, 2])
    red = np.zeros((10, 10, 3), np.float32)
    red[:, :, 0] = 1.0
    luma = prepare(red, _config(channels=1, interpolation="nearest")).image  # (32, 24, 1)
    assert luma.shape == (32, 24, 1)
    np.testing.assert_allclose(luma, 0.299, rtol=1e-6)


def test_cubic_overshoot_is_clipped() -> None:
    edge = np.zeros((8, 8), np.float32)
    edge[:, 4:] = 1.0
    out = prepare(edge, _config(interpolation="cubic")).image
    assert out.min() == 0.0 and out.max() == 1.0


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((4, 4), np.uint8), "must be float"),
        (np.full((4, 4), 1.5, np.float32), r"must lie in \[0, 1\]"),
        (np.full((4, 4), np.nan, np.float32), r"must lie in \[0, 1\]"),
        (np.zeros((4, 4, 2), np.float32), "must be"),
        (np.zeros((0, 4), np.float32), "must not be empty"),
    ],
)
def test_bad_display_images_are_rejected(image: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prepare(image, _config())


def test_mammogram_is_cropped_flipped_and_masked() -> None:
    image, truth = synthetic_mammogram(chest_wall="right")
    config = _config(input_size=(64, 48), channels=1, crop_breast=True, canonical_orientation=True)
    prepared = prepare(image, config)
    ops = prepared.geometry.ops
    assert [type(op) for op in ops] == [Crop, Flip, Resize]
    assert prepared.image[:, 0].mean() > prepared.image[:, -1].mean()  # chest wall on the left
    back = prepared.geometry.to_original(prepared.image[:, :, 0] > 0)
    assert ((back & truth).sum() / (back | truth).sum()) > 0.9


def test_orientation_without_crop_uses_laterality_when_ambiguous() -> None:
    image, _ = synthetic_mammogram(centre_x=0.5, label=False, border=False)
    config = _config(canonical_orientation=True)
    assert prepare(image, config, laterality=Laterality.RIGHT).geometry.ops[0] == Flip(True)
    assert isinstance(prepare(image, config, laterality=Laterality.LEFT).geometry.ops[0], Resize)


# --- normalise ------------------------------------------------------------------------------------


def test_normalise_unit_zscore_and_imagenet() -> None:
    image = prepare(_rgb(), _config()).image  # (32, 24, 3)
    unit = normalise(image, _config())
    assert unit.shape == (3, 32, 24) and unit.flags.c_contiguous
    np.testing.assert_array_equal(unit, image.transpose(2, 0, 1))
    zscore = normalise(image, _config(normalisation="zscore", mean=[0.5] * 3, std=[0.25] * 3))
    np.testing.assert_allclose(zscore, (unit - 0.5) / 0.25, rtol=1e-6)
    imagenet = normalise(image, _config(normalisation="imagenet"))
    np.testing.assert_allclose(imagenet[1], (unit[1] - 0.456) / 0.224, rtol=1e-5)
    assert imagenet.dtype == np.float32


def test_normalise_rejects_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"\(32, 24, 3\)"):
        normalise(np.zeros((32, 24, 1), np.float32), _config())


def test_preprocess_is_prepare_then_normalise() -> None:
    config = _config(normalisation="imagenet", resize_mode="letterbox")
    chw, geometry = preprocess(_rgb(), config)
    prepared = prepare(_rgb(), config)
    np.testing.assert_array_equal(chw, normalise(prepared.image, config))
    assert geometry == prepared.geometry


def test_uint8_helpers_round_trip() -> None:
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(to_uint8(from_uint8(values)), values)
    assert to_uint8(np.array([-0.1, 0.5, 1.2])).tolist() == [0, 128, 255]
    with pytest.raises(ValueError, match="uint8"):
        from_uint8(values.astype(np.float32))


# --- decoded records ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "policy", "index"),
    [(1, "middle", 0), (5, "first", 0), (5, "middle", 2), (4, "middle", 2), (5, "last", 4)],
)
def test_select_frame(frames: int, policy: str, index: int) -> None:
    assert select_frame(frames, FramePolicy(policy)) == index


def test_select_frame_needs_a_frame() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        select_frame(0, FramePolicy.FIRST)


def test_preprocess_decoded_picks_the_frame_and_passes_laterality() -> None:
    image, _ = synthetic_mammogram(120, 100, centre_x=0.5, label=False, border=False)
    raw = np.stack([to_uint8(image * f) for f in (0.2, 1.0, 0.6)])  # (3, H, W) uint8
    metadata = ImageMetadata(
        format=ImageFormat.PNG,
        rows=120,
        columns=100,
        frames=3,
        photometric_interpretation="MONOCHROME2",
        laterality=Laterality.RIGHT,
    )
    decoded = DecodedImage(metadata=metadata, raw=raw)
    config = _config(canonical_orientation=True, frame_policy="middle")
    chw, geometry, index = preprocess_decoded(decoded, config)
    assert index == 1
    expected, _ = preprocess(decoded.display(1), config, laterality=Laterality.RIGHT)
    np.testing.assert_array_equal(chw, expected)
    assert geometry.ops[0] == Flip(True)  # ambiguous content: laterality R decides


# --- golden outputs -------------------------------------------------------------------------------


def golden_cases() -> dict[str, tuple[np.ndarray, PreprocessConfig]]:
    mammogram, _ = synthetic_mammogram(240, 200, chest_wall="right", seed=1)
    return {
        "rgb_letterbox_zscore": (
            _rgb(),
            _config(
                input_size=(64, 48),
                resize_mode="letterbox",
                normalisation="zscore",
                mean=[0.5, 0.4, 0.3],
                std=[0.25, 0.2, 0.15],
            ),
        ),
        "mammogram_crop_flip": (
            mammogram,
            _config(
                input_size=(64, 64),
                channels=1,
                crop_breast=True,
                canonical_orientation=True,
                interpolation="linear",
            ),
        ),
    }


def golden_summary(image: np.ndarray, config: PreprocessConfig) -> dict[str, Any]:
    """Shape, geometry, per-channel mean / std / min / max and 4x4 block means of channel 0."""
    chw, geometry = preprocess(image, config)
    c, h, w = chw.shape
    blocks = chw[0].reshape(4, h // 4, 4, w // 4).mean(axis=(1, 3))

    def r(values: np.ndarray) -> list[Any]:
        return np.round(values.astype(np.float64), 6).tolist()

    return {
        "shape": [c, h, w],
        "geometry": geometry.to_dict(),
        "mean": r(chw.mean(axis=(1, 2))),
        "std": r(chw.std(axis=(1, 2))),
        "min": r(chw.min(axis=(1, 2))),
        "max": r(chw.max(axis=(1, 2))),
        "blocks": r(blocks),
    }


GOLDEN: dict[str, dict[str, Any]] = {
    "rgb_letterbox_zscore": {
        "shape": [3, 64, 48],
        "geometry": {
            "original_hw": [90, 120],
            "output_hw": [64, 48],
            "ops": [
                {"op": "resize", "from_hw": [90, 120], "to_hw": [36, 48]},
                {"op": "pad", "top": 14, "bottom": 14, "left": 0, "right": 0, "value": 0.0},
            ],
        },
        "mean": [-0.758265, -1.090883, 0.763504],
        "std": [1.16834, 0.984926, 2.481354],
        "min": [-2.0, -2.0, -2.0],
        "max": [1.634666, 2.128514, 4.354906],
        "blocks": [
            [-1.697023, -1.71049, -1.733961, -1.630375],
            [-0.124385, 0.178331, 0.50776, 0.497917],
            [-0.022164, 0.024136, 0.030463, 0.544465],
            [-1.788602, -1.761448, -1.733734, -1.713135],
        ],
    },
    "mammogram_crop_flip": {
        "shape": [1, 64, 64],
        "geometry": {
            "original_hw": [240, 200],
            "output_hw": [64, 64],
            "ops": [
                {"op": "crop", "top": 29, "left": 60, "height": 183, "width": 140},
                {"op": "flip", "horizontal": True},
                {"op": "resize", "from_hw": [183, 140], "to_hw": [64, 64]},
            ],
        },
        "mean": [0.418052],
        "std": [0.236661],
        "min": [0.0],
        "max": [0.697348],
        "blocks": [
            [0.498832, 0.412572, 0.234859, 0.027416],
            [0.638679, 0.627155, 0.570779, 0.347041],
            [0.641552, 0.625229, 0.557507, 0.348477],
            [0.496352, 0.404587, 0.229433, 0.02837],
        ],
    },
}


@pytest.mark.parametrize("name", ["rgb_letterbox_zscore", "mammogram_crop_flip"])
def test_golden_outputs(name: str) -> None:
    image, config = golden_cases()[name]
    actual, expected = golden_summary(image, config), GOLDEN[name]
    assert actual["shape"] == expected["shape"]
    assert actual["geometry"] == expected["geometry"]
    for key in ("mean", "std", "min", "max", "blocks"):
        np.testing.assert_allclose(actual[key], expected[key], atol=2e-5, err_msg=key)


if __name__ == "__main__":
    summaries = {name: golden_summary(*case) for name, case in golden_cases().items()}
    print(json.dumps(summaries, indent=1))
