"""Augmentation policies of the paper, applied on the fly to uint8 images and their masks.

Policies (paper, "Augmentation policies"): ``vanilla`` (original data only), ``geometric``
(rotation, vertical and horizontal flip, grid distortion), ``filter`` (CLAHE, Gaussian blur,
histogram equalisation, Fancy PCA) and ``all`` (geometric then filter). ``geometric_histopathology``
is the set the paper used for stage 3 (rotation, flip, translation, shear, Gaussian blur,
equalisation, shift). For histopathology patches, ``filter_histo`` adds the eight symmetries of
the square to Filter (the paper's baseline) and ``filter_histo_stain`` also jitters H&E stain.

Geometric transforms move the mask with the image (nearest-neighbour, zero fill), so mask values
stay the values they were; filters are pixel-level and never touch the mask (albumentations 2.0).
Grey images may be ``(H, W)`` or ``(H, W, 1)`` and keep their shape. On grey images Fancy PCA is
a contrast scaling around the mean and CLAHE works on the single channel; on RGB, Fancy PCA jitters
along the principal colour axes and CLAHE and equalisation work on luminance only, so hue is kept.

Determinism: every call reseeds the pipeline from ``sample_seed(seed, key, epoch, copy)``, so a
sample's augmentation depends only on those numbers, not on worker order; a paper-protocol copy
``k`` of one image is regenerated identically with ``epoch=0, copy=k``.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable

import albumentations as A
import cv2
import numpy as np

from training.registry import Registry

TransformList = list[A.BasicTransform | A.BaseCompose]
AUGMENTATIONS: Registry = Registry("augmentation policy")


@AUGMENTATIONS.register("vanilla")
def vanilla() -> TransformList:
    """The original data only."""
    return []


@AUGMENTATIONS.register("geometric")
def geometric() -> TransformList:
    """Random rotation, horizontal and vertical flip, grid distortion."""
    return [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.Rotate(limit=(-30, 30), border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.5),
        A.GridDistortion(num_steps=5, distort_limit=(-0.3, 0.3), p=0.3),
    ]


@AUGMENTATIONS.register("filter")
def filter_() -> TransformList:
    """CLAHE or histogram equalisation, Gaussian blur, Fancy PCA; the mask is left alone."""
    return [
        A.OneOf(
            [A.CLAHE(clip_limit=(1.0, 4.0), tile_grid_size=(8, 8)), A.Equalize(by_channels=False)],
            p=0.5,
        ),
        A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.3, 1.5), p=0.3),
        A.FancyPCA(alpha=0.1, p=0.5),
    ]


@AUGMENTATIONS.register("filter_us")
def filter_ultrasound() -> TransformList:
    """Filter plus what an ultrasound probe varies: a left-right flip (never up-down: the skin
    is at the top), small shifts, zooms and tilts, and gain (brightness/contrast)."""
    return [
        A.HorizontalFlip(p=0.5),
        A.Affine(
            scale=(0.85, 1.15),
            translate_percent=(-0.08, 0.08),
            rotate=(-10, 10),
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=0,
            p=0.7,
        ),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.2, p=0.5),
        *filter_(),
    ]


@AUGMENTATIONS.register("all")
def all_() -> TransformList:
    """Geometric and filter together."""
    return geometric() + filter_()


@AUGMENTATIONS.register("geometric_histopathology")
def geometric_histopathology() -> TransformList:
    """The paper's stage-3 set: rotation, flip, translation, shear, blur, equalisation, shift."""
    return [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.Affine(
            rotate=(-90, 90),
            translate_percent=(-0.1, 0.1),
            shear=(-10, 10),
            border_mode=cv2.BORDER_REFLECT_101,
            p=0.7,
        ),
        A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.3, 1.0), p=0.2),
        A.Equalize(by_channels=False, p=0.2),
    ]


@AUGMENTATIONS.register("filter_histo")
def filter_histopathology() -> TransformList:
    """Filter plus the eight symmetries of the square (rotations by 90 degrees, flips), drawn
    uniformly: tissue on a slide has no orientation, and no pixel is interpolated."""
    return [A.SquareSymmetry(p=1.0), *filter_()]


@AUGMENTATIONS.register("filter_histo_stain")
def filter_histopathology_stain() -> TransformList:
    """``filter_histo`` plus H&E stain jitter: the image re-composed from stain concentrations
    under a randomly chosen reference stain matrix with scaled and shifted intensities
    (albumentations ``HEStain``; Ruifrok & Johnston 2001, Macenko et al. 2009), as stain varies
    between labs and scanners."""
    stain = A.HEStain(
        method="random_preset",
        intensity_scale_range=(0.9, 1.1),
        intensity_shift_range=(-0.05, 0.05),
        p=0.5,
    )
    return [A.SquareSymmetry(p=1.0), stain, *filter_()]


def sample_seed(seed: int, key: int | str, epoch: int = 0, copy: int = 0) -> int:
    """A 32-bit seed that depends only on the run seed, the sample key, the epoch and the copy."""
    key_int = key if isinstance(key, int) else zlib.crc32(key.encode("utf-8"))
    entropy = [int(seed) & 0xFFFFFFFF, int(key_int) & 0xFFFFFFFF, int(epoch), int(copy)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


class Augmenter:
    """One policy as a reseedable albumentations pipeline for ``uint8`` images and masks.

    Args:
        policy: a name in ``AUGMENTATIONS``; an unknown name lists the valid ones.
        seed: the run seed that per-sample seeds derive from.
    """

    def __init__(self, policy: str, seed: int = 0) -> None:
        builder: Callable[[], TransformList] = AUGMENTATIONS.get(policy)
        self.policy = policy
        self.seed = seed
        self._compose = A.Compose(builder(), p=1.0, seed=seed)

    @property
    def is_identity(self) -> bool:
        """True for a policy without transforms (``vanilla``)."""
        return len(self._compose.transforms) == 0

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray | None = None,
        *,
        key: int | str = 0,
        epoch: int = 0,
        copy: int = 0,
        seed: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Augment one image (``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` uint8) and its mask.

        The draw is seeded by ``sample_seed(self.seed, key, epoch, copy)``, or by ``seed`` when
        given (e.g. a paper-protocol copy's ``SplitEntry.augmentation_seed``).
        """
        _check_inputs(image, mask)
        if self.is_identity:
            return image, mask
        # One shared stream for all transforms: albumentations' ``set_random_seed`` gives every
        # transform its own generator with the SAME seed, so their coin flips would coincide.
        seed = sample_seed(self.seed, key, epoch, copy) if seed is None else seed
        self._compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        if mask is None:
            return self._compose(image=image)["image"], None
        out = self._compose(image=image, mask=mask)
        return out["image"], out["mask"]


def _check_inputs(image: np.ndarray, mask: np.ndarray | None) -> None:
    if image.dtype != np.uint8:
        raise TypeError(f"augmentation works on uint8 images, got {image.dtype}")
    grey = image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1)
    if not (grey or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"image must be (H, W), (H, W, 1) or (H, W, 3), got {image.shape}")
    if mask is not None and mask.shape[:2] != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape[:2]}")


def build_augmenter(policy: str, seed: int = 0) -> Augmenter:
    """The ``Augmenter`` for ``policy`` (registry name), seeded with ``seed``."""
    return Augmenter(policy, seed=seed)
