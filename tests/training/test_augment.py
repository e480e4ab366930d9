"""Augmentation policies, MixUp/CutMix and ``breastdx augment-preview``."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.augment import AUGMENTATIONS, Augmenter, sample_seed
from training.cli_augment import grid_shape
from training.cli_augment import main as preview_main
from training.losses import build_loss
from training.mix import BatchMixer, cutmix, cutmix_box, mixup, one_hot
from training.registry import UnknownNameError

SIZE = 48
PAPER_POLICIES = ("vanilla", "geometric", "filter", "all")


def _mask() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[6:20, 4:16] = 1  # off-centre: every flip moves it
    mask[2, 2] = 1  # a known corner pixel
    return mask


def _image(kind: str) -> np.ndarray:
    rng = np.random.default_rng(1)
    grey = (rng.integers(20, 120, (SIZE, SIZE)) + 120 * _mask()).astype(np.uint8)  # (H, W)
    if kind == "grey2d":
        return grey
    if kind == "grey3d":
        return grey[..., None]  # (H, W, 1)
    tint = np.stack([grey, (grey * 0.8).astype(np.uint8), (grey * 0.6).astype(np.uint8)], axis=2)
    return tint  # (H, W, 3)


KINDS = ("grey2d", "grey3d", "rgb")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("policy", [*PAPER_POLICIES, "geometric_histopathology"])
def test_policy_keeps_shape_dtype_and_binary_mask(policy: str, kind: str) -> None:
    image, mask = _image(kind), _mask()
    augmenter = Augmenter(policy, seed=3)
    for epoch in range(6):
        out, out_mask = augmenter(image, mask, key="s1", epoch=epoch)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert out_mask is not None and out_mask.shape == mask.shape
        assert set(np.unique(out_mask)) <= {0, 1}


def test_registry_holds_the_paper_policies_and_rejects_unknown_names() -> None:
    assert set(PAPER_POLICIES) <= set(AUGMENTATIONS.names())
    with pytest.raises(UnknownNameError, match="vanilla"):
        Augmenter("sharpen")


def test_vanilla_is_the_identity() -> None:
    image, mask = _image("rgb"), _mask()
    out, out_mask = Augmenter("vanilla")(image, mask, key=1, epoch=5)
    assert out is image and out_mask is mask


@pytest.mark.parametrize("kind", KINDS)
def test_filters_never_touch_the_mask_but_change_pixels(kind: str) -> None:
    image, mask = _image(kind), _mask()
    augmenter = Augmenter("filter", seed=0)
    changed = 0
    for epoch in range(12):
        out, out_mask = augmenter(image, mask, key="s", epoch=epoch)
        assert np.array_equal(out_mask, mask)
        changed += int(not np.array_equal(out, image))
    assert changed > 0


@pytest.mark.parametrize("kind", KINDS)
def test_geometric_flips_move_the_mask_with_the_image(kind: str) -> None:
    image, mask = _image(kind), _mask()
    augmenter = Augmenter("geometric", seed=0)
    seen = {"h": 0, "v": 0}
    for epoch in range(80):
        out, out_mask = augmenter(image, mask, key="flip", epoch=epoch)
        if np.array_equal(out, image[:, ::-1]):
            seen["h"] += 1
            assert out_mask[2, SIZE - 3] == 1 and np.array_equal(out_mask, mask[:, ::-1])
        elif np.array_equal(out, image[::-1]):
            seen["v"] += 1
            assert out_mask[SIZE - 3, 2] == 1 and np.array_equal(out_mask, mask[::-1])
        # whatever fired, the bright lesion stays under the mask
        grey = out.reshape(SIZE, SIZE, -1)[..., 0].astype(float)
        if out_mask.sum() > 20:
            assert grey[out_mask == 1].mean() > grey[out_mask == 0].mean() + 60
    assert seen["h"] > 0 and seen["v"] > 0


@pytest.mark.parametrize("policy", ["geometric", "filter", "all"])
def test_same_seed_same_augmentation(policy: str) -> None:
    image, mask = _image("rgb"), _mask()
    first = Augmenter(policy, seed=7)(image, mask, key="a", epoch=2, copy=1)
    again = Augmenter(policy, seed=7)(image, mask, key="a", epoch=2, copy=1)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    other = [Augmenter(policy, seed=7)(image, mask, key="a", epoch=e)[0] for e in range(3, 9)]
    assert any(not np.array_equal(first[0], o) for o in other)


def test_sample_seed_depends_on_every_part() -> None:
    base = sample_seed(1, "x", 2, 3)
    assert base == sample_seed(1, "x", 2, 3)
    assert len({base, sample_seed(2, "x", 2, 3), sample_seed(1, "y", 2, 3)}) == 3
    assert len({base, sample_seed(1, "x", 9, 3), sample_seed(1, "x", 2, 4)}) == 3


def test_augmenter_rejects_bad_inputs() -> None:
    with pytest.raises(TypeError, match="uint8"):
        Augmenter("filter")(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="does not match"):
        Augmenter("filter")(np.zeros((8, 8), np.uint8), np.zeros((4, 4), np.uint8))


# --- MixUp / CutMix ---------------------------------------------------------------------------


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.arange(1, 7, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 3, 16, 16)
    return inputs.contiguous(), torch.tensor([0, 1, 0, 1, 1, 0])


def test_mixup_mixes_inputs_and_labels_with_one_lambda() -> None:
    inputs, labels = _batch()
    result = mixup(inputs, labels, 2, 0.4, np.random.default_rng(0))
    assert torch.allclose(result.targets.sum(dim=1), torch.ones(6))
    # each mixed image is lam * own + (1 - lam) * partner, partner's value from its soft label
    own = inputs[:, 0, 0, 0]
    partner = (result.inputs[:, 0, 0, 0] - result.lam * own) / (1 - result.lam)
    assert set(partner.round().tolist()) <= set(own.tolist())
    assert 0.0 <= result.lam <= 1.0


@pytest.mark.parametrize("seed", range(5))
def test_cutmix_box_area_matches_lambda(seed: int) -> None:
    inputs, labels = _batch()
    result = cutmix(inputs, labels, 2, 1.0, np.random.default_rng(seed))
    assert torch.allclose(result.targets.sum(dim=1), torch.ones(6))
    assert result.box is not None
    y0, y1, x0, x1 = result.box
    area = (y1 - y0) * (x1 - x0)
    assert area == pytest.approx((1 - result.lam) * 16 * 16)
    changed = (result.inputs != inputs)[:, 0].sum(dim=(1, 2))  # (B,) pixels from the partner
    assert all(int(c) in (0, area) for c in changed)
    moved = changed > 0  # those rows were mixed with another image: label weight 1 - lam there
    own = one_hot(labels, 2)
    weight_own = (result.targets * own).sum(dim=1)
    assert torch.allclose(weight_own[moved & (weight_own < 1)], torch.tensor(result.lam))


def test_cutmix_box_is_clipped_to_the_image() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        y0, y1, x0, x1 = cutmix_box(10, 12, float(rng.uniform(0, 1)), rng)
        assert 0 <= y0 <= y1 <= 10 and 0 <= x0 <= x1 <= 12


def test_batch_mixer_one_hot_when_off_and_the_loss_takes_soft_targets() -> None:
    inputs, labels = _batch()
    off = BatchMixer(2, mixup_alpha=0.4, prob=0.0)(inputs, labels, np.random.default_rng(0))
    assert off.lam == 1.0 and torch.equal(off.targets, one_hot(labels, 2))
    mixer = BatchMixer(2, mixup_alpha=0.4, cutmix_alpha=1.0, prob=1.0)
    on = mixer(inputs, labels, np.random.default_rng(1))
    assert torch.allclose(on.targets.sum(dim=1), torch.ones(6))
    ce, logits = build_loss("ce"), torch.randn(6, 2)
    assert torch.allclose(ce(logits, one_hot(labels, 2)), F.cross_entropy(logits, labels))
    mixed = ce(logits, on.targets)
    expected = -(on.targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    assert torch.allclose(mixed, expected)
    with pytest.raises(ValueError, match="probability"):
        BatchMixer(2, prob=1.5)


# --- breastdx augment-preview -----------------------------------------------------------------


def _write_case(folder: Path) -> tuple[Path, Path]:
    image = np.full((80, 100), 60, np.uint8)
    mask = np.zeros((80, 100), np.uint8)
    cv2.circle(mask, (35, 30), 14, 255, -1)
    image[mask > 0] = 200
    cv2.imwrite(str(folder / "img.png"), image)
    cv2.imwrite(str(folder / "img_mask.png"), mask)
    return folder / "img.png", folder / "img_mask.png"


def _read_rgb(path: Path) -> np.ndarray:
    pixels = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert pixels is not None
    return pixels


def test_preview_writes_the_grid(tmp_path: Path) -> None:
    image, mask = _write_case(tmp_path)
    out = tmp_path / "grid.png"
    code = preview_main(
        [str(image), "--mask", str(mask), "--out", str(out), "--n", "3", "--tile", "64"]
    )
    assert code == 0
    grid = _read_rgb(out)
    assert grid.shape[:2] == grid_shape(3, 64) == (6 * 64, 96 + 3 * 64)
    assert (grid[..., 2] == 255).any()  # red outlines (BGR on disk)


def test_preview_errors_are_messages_not_tracebacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "grid.png"
    assert preview_main([str(tmp_path / "missing.png"), "--out", str(out)]) == 1
    assert "image: The file does not exist" in capsys.readouterr().err
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    assert preview_main([str(junk), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("augment-preview: image:") and "Traceback" not in err
    image, _ = _write_case(tmp_path)
    assert preview_main([str(image), "--mask", str(junk), "--out", str(out)]) == 1
    assert "mask:" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.realdata
def test_preview_on_a_real_busi_image(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "busi" / "Dataset_BUSI_with_GT" / "malignant"
    image, mask = folder / "malignant (1).png", folder / "malignant (1)_mask.png"
    if not image.is_file():
        pytest.skip(f"{image} is absent")
    out = tmp_path / "busi.png"
    code = preview_main(
        [str(image), "--mask", str(mask), "--out", str(out), "--n", "2", "--tile", "96"]
    )
    assert code == 0
    assert _read_rgb(out).shape[:2] == grid_shape(2, 96)
