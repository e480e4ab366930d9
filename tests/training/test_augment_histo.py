"""Histopathology policies: ``filter_histo`` (Filter + the square's eight symmetries) and
``filter_histo_stain`` (+ H&E stain jitter), on synthetic and real IDC patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imaging import decode
from imaging.preprocess import to_uint8
from training.augment import AUGMENTATIONS, Augmenter
from training.config import AugmentConfig

SIZE = 50
HISTO_POLICIES = ("filter_histo", "filter_histo_stain")


def _asymmetric_mask() -> np.ndarray:
    """A mask no rotation or flip maps onto itself: each of the 8 symmetries gives another."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[5:12, 3:30] = 1
    mask[12:20, 3:8] = 1
    return mask


def _square_symmetries(mask: np.ndarray) -> list[np.ndarray]:
    rotations = [np.rot90(mask, k) for k in range(4)]
    return rotations + [np.fliplr(r) for r in rotations]


def _he_like_patch(seed: int = 0) -> np.ndarray:
    """Pink (eosin) stroma with purple (haematoxylin) nuclei, ``(50, 50, 3)`` uint8."""
    rng = np.random.default_rng(seed)
    patch = np.empty((SIZE, SIZE, 3), np.float32)
    patch[:] = (0.93, 0.62, 0.78)
    for _ in range(25):
        y, x = rng.integers(3, SIZE - 3, 2)
        patch[y - 2 : y + 3, x - 2 : x + 3] = (0.35, 0.22, 0.55)
    patch += rng.normal(0, 0.02, patch.shape).astype(np.float32)
    return to_uint8(np.clip(patch, 0, 1))


@pytest.mark.parametrize("policy", HISTO_POLICIES)
def test_histo_policies_are_valid_config_values(policy: str) -> None:
    assert policy in AUGMENTATIONS.names()
    assert AugmentConfig(policy=policy).policy == policy


@pytest.mark.parametrize("policy", HISTO_POLICIES)
def test_every_rotation_by_90_degrees_and_flip_occurs_and_only_those(policy: str) -> None:
    image, mask = _he_like_patch(), _asymmetric_mask()
    candidates = _square_symmetries(mask)
    augmenter = Augmenter(policy, seed=7)
    seen = set()
    for epoch in range(80):
        out, out_mask = augmenter(image, mask, key="patch", epoch=epoch)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert out_mask is not None
        matches = [i for i, c in enumerate(candidates) if np.array_equal(out_mask, c)]
        assert len(matches) == 1  # exactly one symmetry, never an interpolated or shifted mask
        seen.add(matches[0])
    assert seen == set(range(8))


@pytest.mark.parametrize("policy", HISTO_POLICIES)
def test_a_draw_repeats_for_the_same_seed_key_and_epoch(policy: str) -> None:
    image = _he_like_patch()
    first, _ = Augmenter(policy, seed=3)(image, key="p1", epoch=4)
    again, _ = Augmenter(policy, seed=3)(image, key="p1", epoch=4)
    np.testing.assert_array_equal(first, again)


def test_stain_jitter_changes_colour_beyond_what_filter_histo_does() -> None:
    image = _he_like_patch(seed=2)
    plain, stain = Augmenter("filter_histo", seed=0), Augmenter("filter_histo_stain", seed=0)
    colour_plain, colour_stain = [], []
    for epoch in range(40):
        a, _ = plain(image, key="p", epoch=epoch)
        b, _ = stain(image, key="p", epoch=epoch)
        # the mean colour ignores where pixels went: only colour changes move it
        colour_plain.append(a.reshape(-1, 3).mean(axis=0))
        colour_stain.append(b.reshape(-1, 3).mean(axis=0))
    spread_plain = np.std(colour_plain, axis=0).mean()
    spread_stain = np.std(colour_stain, axis=0).mean()
    assert spread_stain > spread_plain


def test_histo_policies_on_a_real_idc_patch(shared_data: Path) -> None:
    patches = sorted((shared_data / "idc" / "IDC_regular_ps50_idx5").glob("*/1/*.png"))
    if not patches:
        pytest.skip("no IDC patch under ../shared/data/idc")
    image = to_uint8(decode(patches[0]).display(0))  # (h, w, 3)
    for policy in HISTO_POLICIES:
        out, _ = Augmenter(policy, seed=1)(image, key=patches[0].name, epoch=0)
        assert out.dtype == np.uint8 and sorted(out.shape) == sorted(image.shape)
