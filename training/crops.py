"""Crop-based training for a fully convolutional segmenter (``TrainConfig.crops``).

A whole mammogram at a working size that keeps 1-3 cm masses visible (the breast region stretched
to e.g. 512 x 512) costs too much per step on a 2-core CPU, and most of its pixels are plain
tissue. ``CropDataset`` wraps the training side's ``SampleDataset`` and serves ``per_image``
square crops of ``size`` pixels per film and epoch, cut from the film AFTER the shared
preprocessing (``imaging.preprocess.prepare``: breast crop, canonical orientation, resize), so a
crop has exactly the scale and orientation the served model sees; the U-Net, being fully
convolutional, then runs on the whole preprocessed film at inference (and on validation).

Per crop (seeded by ``(seed, epoch, film, k)`` only, so a run and its resume draw the same):
- with probability ``lesion_fraction`` on a film that holds a lesion: centred on a random pixel
  of a lesion chosen uniformly (small lesions as often as large ones), shifted by up to
  ``jitter`` x ``size`` on each axis, clipped to the film;
- otherwise, with probability ``hard_negative_fraction`` on a film that has hard negatives
  (``hard_negatives``: an earlier model's false marks in model-input pixels, written by
  ``breastdx hard-negatives``), centred on one of them chosen uniformly, shifted by up to
  ``jitter`` x ``size``, clipped to the film (hard negative mining);
- otherwise a random window, redrawn up to ``BACKGROUND_TRIES`` times until at least
  ``min_tissue`` of its pixels are breast (not the zeroed background), else the most tissue.
Then the training augmentation (keyed per crop), normalisation. A crop's malignancy label is
its film's where the crop holds lesion pixels, else 0 (nothing suspicious in view); the
per-pixel malignancy map is trained inside lesions only, so background crops leave it alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from imaging.preprocess import from_uint8, normalise, to_uint8
from training.config import ConfigError, CropConfig, Task
from training.torch_dataset import Batch, SampleDataset

BACKGROUND_TRIES = 8
HARD_NEGATIVES_FORMAT = "breastdx.hard-negatives/1"
TISSUE_LEVEL = 1.0 / 255  # a preprocessed pixel above this is breast, not zeroed background


@dataclass(frozen=True)
class Window:
    """One crop of film ``film``: top-left corner in model-input pixels, and how it was drawn."""

    film: int
    k: int
    top: int
    left: int
    lesion_centred: bool
    hard_negative: bool = False


class CropDataset(Dataset[Batch]):
    """``per_image`` crops per film of a segmentation ``SampleDataset`` (see the module)."""

    def __init__(self, base: SampleDataset, config: CropConfig, *, seed: int = 0) -> None:
        if base.task is not Task.SEGMENTATION:
            raise ConfigError("crops train segmentation models only")
        height, width = base.preprocess.input_size
        if config.size > min(height, width):
            raise ConfigError(f"crops.size {config.size} exceeds the input size {height}x{width}")
        if any(item.copy > 0 for item in base.items):
            raise ConfigError("crops train with the leakage_safe protocol (no paper copies)")
        self.base = base
        self.config = config
        self.seed = seed
        self.epoch = 0
        self.crop_preprocess = base.preprocess.model_copy(
            update={"input_size": (config.size, config.size)}
        )
        self._lesions: dict[int, list[np.ndarray]] = {}  # film -> (n, 2) pixel rows per lesion
        self._negatives: dict[int, np.ndarray] = {}  # film -> (n, 2) [x, y] false-mark centres
        if config.hard_negatives is not None:
            self._negatives = load_hard_negatives(config.hard_negatives, base, (height, width))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch that crop positions and augmentation derive from."""
        self.epoch = epoch
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base) * self.config.per_image

    def __getitem__(self, index: int) -> Batch:
        film, k = divmod(index, self.config.per_image)
        pixels, mask = self.base._prepared(film)  # (H, W, C), (H, W); decoded once if cached
        window = self._window(film, k, pixels, mask)
        size = self.config.size
        rows = slice(window.top, window.top + size)
        cols = slice(window.left, window.left + size)
        crop, crop_mask = pixels[rows, cols], mask[rows, cols]
        item = self.base.items[window.film]
        augmenter = self.base.augmenter
        if augmenter is not None:
            key = f"{getattr(item.sample, 'id', window.film)}#crop{window.k}"
            image, new_mask = augmenter(to_uint8(crop), crop_mask, key=key, epoch=self.epoch)
            crop = from_uint8(image).reshape(crop.shape)
            crop_mask = new_mask if new_mask is not None else crop_mask
        has_lesion = bool(np.any(crop_mask > 0))
        label = int(getattr(item.sample, "label", 0)) if has_lesion else 0
        return {
            "image": torch.from_numpy(normalise(crop, self.crop_preprocess)),  # (C, s, s)
            "label": torch.tensor(label, dtype=torch.int64),
            "mask": torch.from_numpy((crop_mask > 0).astype(np.float32))[None],  # (1, s, s)
        }

    def window(self, index: int) -> Window:
        """Where crop ``index`` (film ``index // per_image``, crop ``index % per_image``) lies
        in this epoch; a pure function of ``(seed, epoch, index)`` and the film."""
        film, k = divmod(index, self.config.per_image)
        return self._window(film, k, *self.base._prepared(film))

    def _window(self, film: int, k: int, pixels: np.ndarray, mask: np.ndarray) -> Window:
        rng = np.random.default_rng([self.seed, self.epoch, film, k])
        lesions = self._lesion_pixels(film, mask)
        height, width = mask.shape
        size = self.config.size
        if lesions and rng.random() < self.config.lesion_fraction:
            lesion = lesions[int(rng.integers(len(lesions)))]
            y, x = lesion[int(rng.integers(len(lesion)))]
            dy, dx = rng.uniform(-self.config.jitter, self.config.jitter, 2) * size
            top = int(np.clip(round(y + dy - size / 2), 0, height - size))
            left = int(np.clip(round(x + dx - size / 2), 0, width - size))
            return Window(film, k, top, left, True)
        negatives = self._negatives.get(film)
        if negatives is not None and rng.random() < self.config.hard_negative_fraction:
            x, y = negatives[int(rng.integers(len(negatives)))]
            dy, dx = rng.uniform(-self.config.jitter, self.config.jitter, 2) * size
            top = int(np.clip(round(y + dy - size / 2), 0, height - size))
            left = int(np.clip(round(x + dx - size / 2), 0, width - size))
            return Window(film, k, top, left, False, hard_negative=True)
        tissue = pixels.max(axis=2) > TISSUE_LEVEL  # (H, W)
        best = (-1.0, 0, 0)
        for _ in range(BACKGROUND_TRIES):
            top = int(rng.integers(height - size + 1))
            left = int(rng.integers(width - size + 1))
            share = float(tissue[top : top + size, left : left + size].mean())
            best = max(best, (share, top, left))
            if share >= self.config.min_tissue:
                break
        return Window(film, k, best[1], best[2], False)

    def _lesion_pixels(self, film: int, mask: np.ndarray) -> list[np.ndarray]:
        """Pixel coordinates ``(n, 2)`` (row, column) of each 8-connected lesion of a film."""
        if film not in self._lesions:
            count, labels = cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=8)
            self._lesions[film] = [np.argwhere(labels == n) for n in range(1, count)]
        return self._lesions[film]


def load_hard_negatives(
    path: Path, base: SampleDataset, input_hw: tuple[int, int]
) -> dict[int, np.ndarray]:
    """Film index -> ``(n, 2)`` ``[x, y]`` false-mark centres of ``path`` (``breastdx
    hard-negatives``) for the films of ``base`` it names (keyed ``dataset:id``).

    Raises:
        ConfigError: the file is missing, unreadable, of another format, or made at another
            model input size than ``input_hw`` (its centres would not land on the same tissue).
    """
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"crops.hard_negatives {path} is unreadable: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != HARD_NEGATIVES_FORMAT:
        raise ConfigError(
            f"crops.hard_negatives {path} is not a {HARD_NEGATIVES_FORMAT} file (breastdx "
            "hard-negatives writes one)"
        )
    if tuple(document.get("input_size", ())) != tuple(input_hw):
        raise ConfigError(
            f"crops.hard_negatives {path} holds centres for a {document.get('input_size')} model "
            f"input; this run trains at {list(input_hw)}"
        )
    films = document.get("films")
    if not isinstance(films, dict):
        raise ConfigError(f"crops.hard_negatives {path} has no 'films' mapping")
    out: dict[int, np.ndarray] = {}
    for index, item in enumerate(base.items):
        sample = item.sample
        key = f"{getattr(sample, 'dataset', '')}:{getattr(sample, 'id', '')}"
        rows = films.get(key)
        if not rows:
            continue
        try:
            out[index] = np.asarray([row[:2] for row in rows], np.float64).reshape(-1, 2)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"crops.hard_negatives {path}: {key} holds no [x, y, peak] rows ({exc})"
            ) from exc
    return out
