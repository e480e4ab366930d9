"""A torch ``Dataset`` over samples: decode, the shared imaging preprocessing, augmentation.

Per item: ``load_sample`` (float ``(H, W, C)`` in [0, 1], uint8 mask) -> ``imaging.preprocess.
prepare`` (crop, flip, resize, channels: the very function serving uses) with the mask moved by
the same geometry -> augmentation on uint8 (training side only) -> ``normalise`` to ``(C, H, W)``.
Without augmentation the pixels are exactly what serving computes (no uint8 round trip).

Protocols (``DataConfig.protocol``, splits from ``training.data.splits``): ``leakage_safe`` splits
by patient and near-duplicate group first and augments only the training split, on the fly, with a
seed per (sample, epoch); ``paper`` reproduces the paper's order: every image is copied
``paper_copies`` times (copy 0 the original, copy k a fixed augmentation seeded by the split
entry's ``augmentation_seed``) and the copies are split at random, so near-identical images sit on
both sides (paper.md, "Augmentation policies").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from imaging.preprocess import PreprocessConfig, from_uint8, normalise, prepare, to_uint8
from imaging.record import Laterality
from training.augment import Augmenter
from training.config import ConfigError, Protocol, Task, TrainConfig
from training.data.records import Sample
from training.data.splits import SplitEntry, subset_by_group

LoadFn = Callable[[Any], tuple[np.ndarray, np.ndarray]]  # sample -> (image HWC, mask HW)
Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Item:
    """One entry of a split: a sample and, in the paper protocol, its copy index ``k``."""

    sample: Any  # a training.data.records.Sample, or whatever ``load`` accepts
    copy: int = 0  # 0: the original image; k > 0: the k-th fixed augmented copy
    seed: int | None = None  # the copy's augmentation seed (SplitEntry.augmentation_seed)
    repeat: int = 0  # data.repeat: r > 0 is the r-th extra showing in an epoch (its own draw)


@dataclass(frozen=True)
class DataSplits:
    """Torch datasets of one run; ``test`` may be None (no final test evaluation)."""

    train: Dataset[Batch]
    val: Dataset[Batch]
    test: Dataset[Batch] | None = None


def _default_load(sample: Any) -> tuple[np.ndarray, np.ndarray]:
    from training.data.dataset import load_sample

    return load_sample(sample)


class SampleDataset(Dataset[Batch]):
    """Items -> ``{"image": (C, H, W) float32, "mask": (1, H, W) float32, "label": int64}``.

    ``mask`` is present for segmentation only.

    Args:
        items: samples (or ``Item``s carrying a paper-protocol copy index).
        preprocess: the shared preprocessing configuration.
        task: segmentation or classification.
        augmenter: on-the-fly augmentation (training split only), reseeded per (sample, epoch).
        copy_augmenter: the fixed augmentation of paper-protocol copies ``k > 0``.
        load: sample -> (image ``(H, W, C)`` float32 [0, 1], mask ``(H, W)`` uint8).
    """

    def __init__(
        self,
        items: Sequence[Any],
        preprocess: PreprocessConfig,
        *,
        task: Task,
        augmenter: Augmenter | None = None,
        copy_augmenter: Augmenter | None = None,
        load: LoadFn | None = None,
        cache: bool = False,
    ) -> None:
        self.items = [it if isinstance(it, Item) else Item(it) for it in items]
        # Decoded + preprocessed pixels per item (decode once per run; augmentation stays per
        # epoch). Filled lazily in this process; with num_workers > 0 each worker has its own.
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None
        # Repeats of one item share its decoded pixels: the cache is keyed by the first of them.
        first: dict[tuple[int, int, int | None], int] = {}
        self._cache_index = [
            first.setdefault((id(it.sample), it.copy, it.seed), i)
            for i, it in enumerate(self.items)
        ]
        self.preprocess = preprocess
        self.task = task
        self.augmenter = augmenter if augmenter is not None and not augmenter.is_identity else None
        self.copy_augmenter = copy_augmenter
        self.load = load or _default_load
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch that on-the-fly augmentation seeds derive from."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Batch:
        item = self.items[index]
        pixels, mask = self._prepared(index)  # (h, w, C) float32, (h, w) uint8
        pixels, mask = self._augment(item, pixels, mask, index)
        out: Batch = {
            "image": torch.from_numpy(normalise(pixels, self.preprocess)),  # (C, h, w)
            "label": torch.tensor(int(getattr(item.sample, "label", 0)), dtype=torch.int64),
        }
        if self.task is Task.SEGMENTATION:
            out["mask"] = torch.from_numpy((mask > 0).astype(np.float32))[None]  # (1, h, w)
        return out

    def _prepared(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The item's preprocessed pixels ``(h, w, C)`` and mask ``(h, w)`` (cached if enabled)."""
        index = self._cache_index[index]
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        sample = self.items[index].sample
        image, mask = self.load(sample)  # (H, W, C) float32, (H, W) uint8
        laterality = getattr(sample, "laterality", Laterality.UNKNOWN)
        prepared = prepare(
            image[..., 0] if image.shape[-1] == 1 else image, self.preprocess, laterality=laterality
        )
        result = (prepared.image, prepared.geometry.apply_mask(mask))
        if self._cache is not None:
            self._cache[index] = result
        return result

    def _augment(
        self, item: Item, pixels: np.ndarray, mask: np.ndarray, index: int
    ) -> tuple[np.ndarray, np.ndarray]:
        key = str(getattr(item.sample, "id", index))
        if item.repeat:  # a repeat draws its own augmentation in the same epoch
            key = f"{key}#repeat{item.repeat}"
        steps: list[tuple[Augmenter, int, int | None]] = []
        if item.copy > 0 and self.copy_augmenter is not None:
            steps.append((self.copy_augmenter, 0, item.seed))  # fixed: same in every epoch
        if self.augmenter is not None:
            steps.append((self.augmenter, self.epoch, None))
        if not steps:
            return pixels, mask
        image = to_uint8(pixels)  # (h, w, C)
        for augmenter, epoch, seed in steps:
            image, new_mask = augmenter(
                image, mask, key=key, epoch=epoch, copy=item.copy, seed=seed
            )
            mask = new_mask if new_mask is not None else mask
        return from_uint8(image).reshape(pixels.shape), mask


def read_samples(dataset: str, root: Path) -> list[Any]:
    """The samples of a data set by ``DataConfig.dataset`` name."""
    from training.data import busbra, busi, cbis_ddsm, cbis_ddsm_coco, idc, mias

    if dataset == "busi":
        return busi.read_busi(root)
    if dataset == "busbra":
        return busbra.read_busbra(root)
    if dataset == "busi+busbra":
        return busi.read_busi(Path(root) / "busi") + busbra.read_busbra(Path(root) / "busbra")
    if dataset in ("cbis_ddsm", "cbis_ddsm_jpeg"):
        layout = "jpeg" if dataset == "cbis_ddsm_jpeg" else "dicom"
        return cbis_ddsm.read_cbis_ddsm(root, layout=layout)
    if dataset == "cbis_ddsm_coco":
        return cbis_ddsm_coco.read_cbis_coco(root)
    if dataset == "cbis_ddsm_coco+mias":  # root holds cbis-ddsm-mass/ and mammography/mini-mias/
        return cbis_ddsm_coco.read_cbis_coco(Path(root) / "cbis-ddsm-mass") + mias.read_mias(root)
    if dataset == "mias":
        return mias.read_mias(root)
    return idc.read_idc(root)


def make_split(config: TrainConfig, samples: list[Any]) -> Any:
    """The run's ``training.data.splits.Split``: loaded from ``data.split_file`` (and verified
    against the data) where that file exists, otherwise made by the protocol and saved there."""
    from training.data import splits

    data = config.data
    path = data.split_file
    if path is not None and Path(path).is_file():
        split = splits.Split.load(Path(path))
        if split.leakage_safe != (data.protocol is Protocol.LEAKAGE_SAFE):
            raise ConfigError(f"split file {path} was made with protocol {split.protocol!r}")
        splits.verify(split, samples)
        return split
    fractions = (data.fractions.train, data.fractions.val, data.fractions.test)
    if data.protocol is Protocol.PAPER:
        vanilla = Augmenter(config.augment.policy).is_identity  # the paper's vanilla: no copies
        factor = 1 if vanilla else data.paper_copies
        split = splits.paper_protocol_split(
            samples, factor=factor, fractions=fractions, seed=data.seed
        )
    elif "+" in data.dataset.value:  # busi+busbra, cbis_ddsm_coco+mias: each set on its own
        split = splits.split_per_dataset(samples, fractions=fractions, seed=data.seed)
    else:
        split = splits.leakage_safe_split(samples, fractions=fractions, seed=data.seed)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        split.save(Path(path))
    return split


def build_splits(config: TrainConfig, load: LoadFn | None = None) -> DataSplits:
    """Read the configured data set, split it by the protocol and wrap each side.

    The split used is also saved as ``output_dir/split.json``. Only the training side of a
    leakage-safe run is augmented on the fly; paper-protocol copies k > 0 are augmented (fixed)
    on every side, as the paper did before splitting.
    """
    samples = read_samples(config.data.dataset.value, config.data.root)
    if config.task is Task.SEGMENTATION:
        samples = [s for s in samples if getattr(s, "segmentable", True)]
    if config.data.max_samples is not None:
        samples = subset_by_group(samples, config.data.max_samples, seed=config.data.seed)
    split = make_split(config, samples)
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    split.save(Path(config.output_dir) / "split.json")
    by_id = {s.id: s for s in samples}
    augmenter = Augmenter(config.augment.policy, seed=config.seed)
    on_the_fly = augmenter if config.data.protocol is Protocol.LEAKAGE_SAFE else None

    def side(
        name: str, aug: Augmenter | None, repeat: dict[str, int] | None = None
    ) -> SampleDataset:
        entries = split.entries_of(name)
        if name == "train" and config.data.train_fraction is not None:
            entries = _train_subset(entries, by_id, config.data.train_fraction, config.data.seed)
        items = [
            Item(by_id[e.sample_id], e.augmentation_index or 0, e.augmentation_seed)
            for e in entries
        ]
        if repeat:
            items = _repeated(items, repeat)
        return SampleDataset(
            items,
            config.preprocess,
            task=config.task,
            augmenter=aug,
            copy_augmenter=augmenter,
            load=load,
            cache=config.cache,
        )

    films = side("train", on_the_fly, config.data.repeat)
    train: Dataset[Batch] = films
    if config.crops is not None:  # crops of the training films; validation stays on whole films
        from training.crops import CropDataset

        train = CropDataset(films, config.crops, seed=config.seed)
    return DataSplits(train, side("val", None), side("test", None))


def _repeated(items: list[Item], repeat: dict[str, int]) -> list[Item]:
    """``items`` and, after them, the extra showings ``data.repeat`` asks for, per data set."""
    present = {getattr(it.sample, "dataset", None) for it in items}
    unknown = sorted(set(repeat) - present)
    if unknown:
        names = ", ".join(sorted(str(name) for name in present))
        raise ConfigError(f"data.repeat names {unknown}, not in the training data ({names})")
    extra = [
        replace(it, repeat=r)
        for r in range(1, max(repeat.values()))
        for it in items
        if r < repeat.get(getattr(it.sample, "dataset", None), 1)
    ]
    return items + extra


def _train_subset(
    entries: list[SplitEntry], by_id: dict[str, Sample], fraction: float, seed: int
) -> list[SplitEntry]:
    """The training entries of a seeded subset of whole groups holding about ``fraction`` of
    the training images (``data.train_fraction``; ``subset_by_group`` draws the groups)."""
    samples = list({e.sample_id: by_id[e.sample_id] for e in entries}.values())
    kept = subset_by_group(samples, max(1, round(fraction * len(samples))), seed=seed)
    ids = {s.id for s in kept}
    return [e for e in entries if e.sample_id in ids]
