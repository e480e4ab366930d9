"""``resize_mode: pad``: native pixels, edge patches padded (never stretched), exact inverse.

Synthetic patches check the geometry; real IDC edge patches (smaller than 50 x 50 at the slide
border) check that the original pixels reach the model input unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imaging import decode
from imaging.geometry import Geometry, Pad, Resize
from imaging.preprocess import Normalisation, PreprocessConfig, ResizeMode, prepare, preprocess


def _pad_config(size: int = 50, pad_value: float = 1.0) -> PreprocessConfig:
    return PreprocessConfig(
        input_size=(size, size), resize_mode=ResizeMode.PAD, pad_value=pad_value
    )


def _patch(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)  # (h, w, 3)


def test_an_edge_patch_is_padded_centred_with_its_pixels_unchanged() -> None:
    patch = _patch(13, 50)
    prepared = prepare(patch, _pad_config())
    assert prepared.image.shape == (50, 50, 3)
    assert prepared.geometry.ops == (Resize((13, 50), (13, 50)), Pad(18, 19, 0, 0, value=1.0))
    np.testing.assert_array_equal(prepared.image[18:31], patch)  # not resampled
    assert np.all(prepared.image[:18] == 1.0) and np.all(prepared.image[31:] == 1.0)


def test_a_native_size_patch_goes_through_untouched() -> None:
    patch = _patch(50, 50)
    prepared = prepare(patch, _pad_config())
    np.testing.assert_array_equal(prepared.image, patch)
    assert prepared.geometry.output_hw == (50, 50)


def test_a_larger_image_is_shrunk_keeping_its_aspect_ratio_never_stretched() -> None:
    prepared = prepare(_patch(75, 60), _pad_config())
    assert prepared.geometry.ops == (Resize((75, 60), (50, 40)), Pad(0, 0, 5, 5, value=1.0))


def test_pad_differs_from_letterbox_only_for_smaller_images() -> None:
    letterbox = PreprocessConfig(
        input_size=(50, 50), resize_mode=ResizeMode.LETTERBOX, pad_value=1.0
    )
    small = _patch(13, 25)
    assert prepare(small, letterbox).geometry.ops[0] == Resize((13, 25), (26, 50))  # enlarged
    assert prepare(small, _pad_config()).geometry.ops[0] == Resize((13, 25), (13, 25))
    large = _patch(100, 80)
    assert prepare(large, letterbox).geometry == prepare(large, _pad_config()).geometry


@pytest.mark.parametrize("hw", [(13, 50), (1, 50), (26, 2), (50, 41)])
def test_the_inverse_maps_a_model_mask_back_onto_the_original_pixels(hw: tuple[int, int]) -> None:
    prepared = prepare(_patch(*hw), _pad_config())
    original = np.random.default_rng(1).random(hw) > 0.5  # (h, w) bool
    forward = prepared.geometry.apply_mask(original.astype(np.uint8))  # (50, 50)
    assert forward.shape == (50, 50) and forward.sum() == original.sum()  # padding adds nothing
    back = prepared.geometry.to_original(forward)
    assert back.shape == hw
    np.testing.assert_array_equal(back.astype(bool), original)


# The histopathology recipe: native 50 px, white glass around edge patches, ImageNet statistics.
PAD_IMAGENET = PreprocessConfig(
    input_size=(50, 50),
    resize_mode=ResizeMode.PAD,
    pad_value=1.0,
    normalisation=Normalisation.IMAGENET,
)


def test_the_pad_value_is_normalised_like_any_pixel() -> None:
    config = PAD_IMAGENET
    chw, geometry = preprocess(_patch(13, 50), config)  # (3, 50, 50)
    assert isinstance(geometry, Geometry) and chw.shape == (3, 50, 50)
    mean, std = config.statistics()
    np.testing.assert_allclose(chw[:, 0, 0], (1.0 - mean) / std, rtol=1e-6)


def _idc_edge_patches(root: Path, limit: int = 8) -> list[Path]:
    found = []
    for path in sorted(root.glob("IDC_regular_ps50_idx5/*/*/*.png")):
        with path.open("rb") as handle:
            header = handle.read(24)  # PNG IHDR: width, height at bytes 16..24
        width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
        if (height, width) != (50, 50):
            found.append(path)
        if len(found) >= limit:
            break
    return found


def test_real_idc_edge_patches_keep_their_native_pixels(shared_data: Path) -> None:
    patches = _idc_edge_patches(shared_data / "idc")
    if not patches:
        pytest.skip("no IDC edge patch (smaller than 50x50) under ../shared/data/idc")
    for path in patches:
        display = decode(path).display(0)  # (h, w, 3), h or w < 50
        prepared = prepare(display, _pad_config())
        assert prepared.image.shape == (50, 50, 3)
        pad = prepared.geometry.ops[1]
        assert isinstance(pad, Pad)
        top, left = pad.top, pad.left
        h, w = display.shape[:2]
        np.testing.assert_array_equal(prepared.image[top : top + h, left : left + w], display)
