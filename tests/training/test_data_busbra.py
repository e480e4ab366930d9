"""BUS-BRA reader: synthetic release layout and the real development copy."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data import busbra
from training.data.dataset import load_sample
from training.data.records import DatasetFormatError, DatasetLayoutError
from training.data.splits import Split, leakage_safe_split, merge_splits, split_per_dataset
from training.data.synthetic import make_busbra, make_busi
from training.torch_dataset import read_samples


@pytest.fixture(scope="module")
def busbra_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_busbra(tmp_path_factory.mktemp("bb") / "busbra", n_cases=9, seed=1)


def test_reads_every_row_with_patient_label_and_mask(busbra_root: Path) -> None:
    samples = busbra.read_busbra(busbra_root)
    # cases 3, 6, 9 have one view, the other six two: 3 + 12 images
    assert len(samples) == 15
    assert [s.id for s in samples] == sorted(s.id for s in samples)
    first = samples[0]
    assert first.id == "bus_0001-l" and first.patient_id == "busbra-1"
    assert first.group_id == "patient:busbra-1"
    assert {s.label for s in samples if s.patient_id == "busbra-2"} == {1}
    assert {s.class_name for s in samples} == {"benign", "malignant"}
    image, mask = load_sample(first)
    assert image.shape[:2] == mask.shape and mask.max() > 0


def test_accepts_the_parent_folder(busbra_root: Path) -> None:
    assert len(busbra.read_busbra(busbra_root.parent)) == 15


def test_missing_mask_and_bad_pathology_are_named(tmp_path: Path) -> None:
    root = make_busbra(tmp_path / "busbra", n_cases=2)
    (root / "Masks" / "mask_0001-r.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"mask_0001-r\.png"):
        busbra.read_busbra(root)
    table = root / "bus_data.csv"
    table.write_text(table.read_text().replace("malignant", "unsure"))
    (root / "Masks" / "mask_0001-r.png").write_bytes(b"")
    with pytest.raises(DatasetFormatError, match="unsure"):
        busbra.read_busbra(root)
    with pytest.raises(DatasetLayoutError, match=r"bus_data\.csv"):
        busbra.read_busbra(tmp_path / "nowhere")


def test_combined_split_keeps_each_data_set_split_and_patients_whole(tmp_path: Path) -> None:
    make_busi(tmp_path / "busi", n=12, seed=0)
    make_busbra(tmp_path / "busbra", n_cases=20, seed=0)
    samples = read_samples("busi+busbra", tmp_path)
    merged = split_per_dataset(samples, seed=0)
    alone = leakage_safe_split([s for s in samples if s.dataset == "busi"], seed=0)
    busi_ids = {s.id for s in samples if s.dataset == "busi"}
    assert {e.sample_id: e.split for e in merged.entries if e.sample_id in busi_ids} == {
        e.sample_id: e.split for e in alone.entries
    }
    sides: dict[str, set[str]] = {}
    for entry in merged.entries:
        sides.setdefault(merged.samples[entry.sample_id].group_id, set()).add(entry.split)
    assert all(len(v) == 1 for v in sides.values())
    per_set = Counter(
        (s.dataset, e.split) for e in merged.entries for s in samples if s.id == e.sample_id
    )
    assert per_set[("busbra", "test")] > 0 and per_set[("busi", "test")] > 0
    path = tmp_path / "split.json"
    merged.save(path)
    assert Split.load(path) == merged
    assert merged.params["datasets"] == ["busbra", "busi"]
    with pytest.raises(Exception, match="two data sets"):
        merge_splits({"a": alone, "b": alone})


@pytest.mark.realdata
def test_real_busbra_counts_patients_and_masks(shared_data: Path) -> None:
    samples = busbra.read_busbra(shared_data / "busbra")
    assert len(samples) == 1328
    assert len({s.patient_id for s in samples}) == 755
    assert Counter(s.class_name for s in samples) == {"benign": 909, "malignant": 419}
    image, mask = load_sample(samples[0])
    assert image.shape[:2] == mask.shape and np.count_nonzero(mask) > 0


@pytest.mark.realdata
def test_committed_ultrasound_split_matches_the_data(shared_data: Path) -> None:
    from tests.conftest import REPO_ROOT
    from training.data.splits import verify

    split = Split.load(REPO_ROOT / "models_registry/store/splits/ultrasound-busi-busbra.json")
    samples = read_samples("busi+busbra", shared_data)
    verify(split, samples)
    old = Split.load(REPO_ROOT / "models_registry/store/splits/ultrasound.json")
    # BUSI keeps the split the earlier BUSI-only model was measured on
    assert {e.sample_id: e.split for e in split.entries if e.sample_id in old.samples} == {
        e.sample_id: e.split for e in old.entries
    }


def test_repeat_shows_a_data_set_more_often_each_time_augmented_anew(tmp_path: Path) -> None:
    from training.config import ConfigError, config_from_dict
    from training.torch_dataset import build_splits

    make_busi(tmp_path / "busi", n=12, seed=0)
    make_busbra(tmp_path / "busbra", n_cases=20, seed=0)

    def splits(repeat: dict[str, int]):  # type: ignore[no-untyped-def]
        return build_splits(
            config_from_dict(
                {
                    "stage": "ultrasound",
                    "task": "segmentation",
                    "output_dir": str(tmp_path / "run"),
                    "cache": True,
                    "data": {"dataset": "busi+busbra", "root": str(tmp_path), "repeat": repeat},
                    "model": {"name": "unet", "width": 4, "input_size": 32},
                    "augment": {"policy": "filter_us"},
                }
            )
        )

    plain, twice = splits({}), splits({"busi": 3})
    busi = [it for it in plain.train.items if it.sample.dataset == "busi"]
    assert busi and len(twice.train) == len(plain.train) + 2 * len(busi)
    assert Counter(it.sample.dataset for it in twice.train.items) == Counter(
        {"busi": 3 * len(busi), "busbra": len(plain.train) - len(busi)}
    )
    assert len(twice.val) == len(plain.val)  # validation and test are never repeated
    first = next(i for i, it in enumerate(twice.train.items) if it.sample.dataset == "busi")
    sample = twice.train.items[first].sample
    again = next(i for i, it in enumerate(twice.train.items) if it.sample is sample and it.repeat)
    a, b = twice.train[first], twice.train[again]
    assert a["label"] == b["label"] and not torch.equal(a["image"], b["image"])  # its own draw
    assert torch.equal(twice.train[first]["image"], a["image"])  # the same draw in an epoch
    with pytest.raises(ConfigError, match=r"data\.repeat names \['idc'\]"):
        splits({"idc": 2})
    with pytest.raises(ConfigError, match=r"data\.repeat factors must be at least 1"):
        splits({"busi": 0})


def test_train_fraction_keeps_whole_training_patients_and_leaves_val_and_test(
    tmp_path: Path,
) -> None:
    from training.config import ConfigError, config_from_dict
    from training.torch_dataset import build_splits

    make_busbra(tmp_path / "busbra", n_cases=40, seed=0)

    def splits(fraction: float | None):  # type: ignore[no-untyped-def]
        return build_splits(
            config_from_dict(
                {
                    "stage": "ultrasound",
                    "task": "segmentation",
                    "output_dir": str(tmp_path / "run"),
                    "data": {
                        "dataset": "busbra",
                        "root": str(tmp_path),
                        "train_fraction": fraction,
                    },
                    "model": {"name": "unet", "width": 4, "input_size": 32},
                }
            )
        )

    whole, half = splits(None), splits(0.5)
    patients = Counter(it.sample.patient_id for it in whole.train.items)
    kept = Counter(it.sample.patient_id for it in half.train.items)
    assert 0.35 * len(whole.train) <= len(half.train) <= 0.65 * len(whole.train)
    assert kept and all(kept[p] == patients[p] for p in kept)  # a patient is never cut in two
    assert [it.sample.id for it in half.val.items] == [it.sample.id for it in whole.val.items]
    assert [it.sample.id for it in half.test.items] == [it.sample.id for it in whole.test.items]
    assert [it.sample.id for it in splits(0.5).train.items] == [
        it.sample.id for it in half.train.items
    ]  # seeded
    with pytest.raises(ConfigError, match="train_fraction"):
        splits(0.0)
