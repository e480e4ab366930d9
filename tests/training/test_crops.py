"""Crop-based training (``training.crops``): where crops fall, what they hold, and a tiny run.

Films are synthetic CBIS-DDSM (COCO boxes) and mini-MIAS copies read by the real readers and
prepared by the shared preprocessing, so crops are cut from what serving would feed the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from imaging.preprocess import PreprocessConfig
from training.config import ConfigError, CropConfig, Task, config_from_dict
from training.crops import CropDataset
from training.data.cbis_ddsm_coco import read_cbis_coco
from training.data.synthetic import make_mias
from training.data.synthetic_cbis import make_cbis_ddsm_coco
from training.torch_dataset import SampleDataset, build_splits

SIZE = 96
PREPROCESS = PreprocessConfig(
    input_size=(SIZE, SIZE),
    channels=1,
    resize_mode="stretch",
    crop_breast=True,
    canonical_orientation=True,
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``cbis-ddsm-mass/`` and ``mammography/mini-mias/``, as ../shared/data holds them."""
    root = tmp_path_factory.mktemp("mammo")
    make_cbis_ddsm_coco(root / "cbis-ddsm-mass", n_patients=8, seed=5)
    make_mias(root / "mammography", n=12, seed=5, size=128)
    return root


@pytest.fixture(scope="module")
def films(data_root: Path) -> SampleDataset:
    samples = read_cbis_coco(data_root / "cbis-ddsm-mass")
    return SampleDataset(samples, PREPROCESS, task=Task.SEGMENTATION, cache=True)


def _crops(films: SampleDataset, seed: int = 0, **options: Any) -> CropDataset:
    config = CropConfig(**({"size": 32, "per_image": 4} | options))
    return CropDataset(films, config, seed=seed)


def test_crops_are_deterministic_per_seed_and_epoch(films: SampleDataset) -> None:
    a, b = _crops(films), _crops(films)
    assert len(a) == 4 * len(films)
    windows = [a.window(i) for i in range(len(a))]
    assert windows == [b.window(i) for i in range(len(b))]
    first, again = a[5], b[5]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["mask"], again["mask"])
    a.set_epoch(1)
    moved = [a.window(i) for i in range(len(a))]
    assert (
        moved != windows and sum(w != m for w, m in zip(windows, moved, strict=True)) > len(a) // 2
    )
    b.set_epoch(1)
    assert moved == [b.window(i) for i in range(len(b))]  # a resumed run draws the same
    assert [_crops(films, seed=1).window(i) for i in range(len(a))] != windows


def test_lesion_centred_share_and_content(films: SampleDataset) -> None:
    crops = _crops(films, per_image=8, lesion_fraction=0.5, jitter=0.35)
    centred = holds_lesion = 0
    for epoch in range(3):
        crops.set_epoch(epoch)
        for index in range(len(crops)):
            window = crops.window(index)
            _, mask = films._prepared(window.film)
            view = mask[window.top : window.top + 32, window.left : window.left + 32]
            assert view.shape == (32, 32)  # always inside the film
            if window.lesion_centred:
                centred += 1
                holds_lesion += bool(view.any())
    total = 3 * len(crops)
    assert 0.4 < centred / total < 0.6  # every synthetic film holds a lesion
    assert holds_lesion == centred  # a lesion-centred crop always shows its lesion
    none = _crops(films, lesion_fraction=0.0)
    assert not any(none.window(i).lesion_centred for i in range(len(none)))
    every = _crops(films, lesion_fraction=1.0)
    assert all(every.window(i).lesion_centred for i in range(len(every)))


def test_background_crops_prefer_breast_tissue(films: SampleDataset) -> None:
    crops = _crops(films, lesion_fraction=0.0, min_tissue=0.6)
    shares = []
    for index in range(len(crops)):
        window = crops.window(index)
        pixels, _ = films._prepared(window.film)
        view = pixels[window.top : window.top + 32, window.left : window.left + 32, 0]
        shares.append(float((view > 1 / 255).mean()))
    assert np.mean(np.array(shares) >= 0.6) > 0.9


def test_crop_items_and_labels(films: SampleDataset) -> None:
    crops = _crops(films, lesion_fraction=0.5)
    seen = set()
    for index in range(len(crops)):
        item = crops[index]
        assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
        assert item["mask"].shape == (1, 32, 32)
        film = films.items[crops.window(index).film].sample
        has_lesion = bool(item["mask"].any())
        assert int(item["label"]) == (film.label if has_lesion else 0)
        seen.add((has_lesion, int(item["label"])))
    assert {(True, 1), (False, 0)} <= seen


def test_crop_configuration_errors(films: SampleDataset) -> None:
    with pytest.raises(ConfigError, match="exceeds the input size"):
        _crops(films, size=128)
    histo = SampleDataset(films.items, PREPROCESS, task=Task.CLASSIFICATION)
    with pytest.raises(ConfigError, match="segmentation models only"):
        CropDataset(histo, CropConfig(size=32))


def _negatives_file(path: Path, dataset: SampleDataset, **changes: Any) -> Path:
    """Two false-mark centres on every other film (as ``breastdx hard-negatives`` writes)."""
    marked = {
        f"{item.sample.dataset}:{item.sample.id}": [[20.0, 70.0, 0.9], [75.5, 30.0, 0.8]]
        for item in dataset.items[::2]
    }
    document = {"format": "breastdx.hard-negatives/1", "input_size": [SIZE, SIZE],
                "films": marked} | changes  # fmt: skip
    path.write_text(json.dumps(document))
    return path


def test_hard_negative_crops_are_centred_on_the_false_marks(
    films: SampleDataset, tmp_path: Path
) -> None:
    path = _negatives_file(tmp_path / "negatives.json", films)
    plain = _crops(films, lesion_fraction=0.25)
    crops = _crops(films, lesion_fraction=0.25, hard_negatives=path, hard_negative_fraction=0.5)
    centres = np.array([[20.0, 70.0], [75.5, 30.0]])  # [x, y]
    hard = background = 0  # non-lesion crops of the marked films
    for epoch in range(4):
        crops.set_epoch(epoch)
        for index in range(len(crops)):
            window = crops.window(index)
            if window.hard_negative:
                hard += 1
                assert window.film % 2 == 0 and not window.lesion_centred
                middle = np.array([window.left + 16, window.top + 16])  # [x, y]
                # jittered by at most 0.35 x 32 px per axis, then clipped into the 96 px film
                near = np.abs(centres - middle).max(axis=1) <= 0.35 * 32 + 16 + 1
                assert near.any()
            elif not window.lesion_centred and window.film % 2 == 0:
                background += 1
    assert 0.3 < hard / (hard + background) < 0.7  # hard_negative_fraction 0.5 of them
    # unmarked films, or no file: the windows of a run without hard negatives, draw for draw
    assert [crops.window(i) for i in range(4, 8)] != [plain.window(i) for i in range(4, 8)]
    crops.set_epoch(0)
    odd = [i for i in range(len(crops)) if crops.window(i).film % 2]
    assert [crops.window(i) for i in odd] == [plain.window(i) for i in odd]


def test_hard_negative_files_must_fit_the_run(films: SampleDataset, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not a breastdx\.hard-negatives/1 file"):
        _crops(films, hard_negatives=_negatives_file(tmp_path / "a.json", films, format="x"))
    with pytest.raises(ConfigError, match=r"holds centres for a \[512, 512\] model input"):
        other = _negatives_file(tmp_path / "b.json", films, input_size=[512, 512])
        _crops(films, hard_negatives=other, hard_negative_fraction=0.5)
    with pytest.raises(ConfigError, match="has no 'films' mapping"):
        _crops(films, hard_negatives=_negatives_file(tmp_path / "c.json", films, films=[1, 2]))
    bad = {f"{item.sample.dataset}:{item.sample.id}": [["x"]] for item in films.items}
    with pytest.raises(ConfigError, match=r"holds no \[x, y, peak\] rows"):
        _crops(films, hard_negatives=_negatives_file(tmp_path / "d.json", films, films=bad))
    with pytest.raises(ConfigError, match="unreadable"):
        _crops(films, hard_negatives=tmp_path / "missing.json", hard_negative_fraction=0.5)
    with pytest.raises(ValueError, match=r"needs crops\.hard_negatives"):
        CropConfig(hard_negative_fraction=0.5)


@pytest.mark.slow
def test_tiny_crop_run_on_both_data_sets(data_root: Path, tmp_path: Path) -> None:
    """Combined data set, split per data set, crops for training, whole films for validation."""
    from training.export import export_checkpoint, split_images
    from training.trainer import train

    config = config_from_dict(
        {
            "stage": "mammography",
            "task": "segmentation",
            "device": "cpu",
            "progress": False,
            "output_dir": str(tmp_path / "run"),
            "data": {"dataset": "cbis_ddsm_coco+mias", "root": str(data_root)},
            "model": {
                "name": "unet",
                "width": 4,
                "in_channels": 1,
                "input_size": 64,
                "options": {"depth": 2, "lesion_malignancy": True},
            },
            "preprocess": {"resize_mode": "stretch", "crop_breast": True,
                           "canonical_orientation": True},
            "crops": {"size": 32, "per_image": 2},
            "loss": {"name": "dice_bce", "malignancy_weight": 0.2,
                     "lesion_malignancy_weight": 0.3},
            "augment": {"policy": "filter_us"},
            "optim": {"epochs": 2, "batch_size": 8, "scheduler": "none"},
        }
    )  # fmt: skip
    data = build_splits(config)
    assert isinstance(data.train, CropDataset)
    assert data.train[0]["image"].shape == (1, 32, 32)
    assert data.val[0]["image"].shape == (1, 64, 64)  # validation on whole films
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert set(split["params"]["parts"]) == {"cbis_ddsm", "mini_mias"}
    tests = {split["samples"][e["sample_id"]]["image_path"].split("/")[-2]
             for e in split["entries"] if e["split"] == "test"}  # fmt: skip
    assert tests == {"train", "mini-mias"}  # each data set has its own test part
    result = train(config, data=data)
    assert result.last_epoch == 2 and result.best_checkpoint.is_file()
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 3 and history[0].startswith("epoch,train_loss")
    metrics = json.loads(result.metrics_file.read_text()) if result.metrics_file else {}
    assert metrics["test"] is not None and "dice" in metrics["val"]
    # trained on 32 px crops, exported (and checked against torch) on whole 64 px films
    films = split_images(tmp_path / "run", "test", 4)  # both data sets' test films
    exported = export_checkpoint(
        result.best_checkpoint,
        tmp_path / "export" / "model.onnx",
        parity_images=films,
        operating_point_split="val",
    )
    card = json.loads(exported.card_path.read_text())
    assert {o["name"]: o["shape"][2:] for o in card["outputs"] if len(o["shape"]) == 4} == {
        "mask_logits": [64, 64],
        "lesion_malignancy_logits": [64, 64],
    }
    assert exported.parity.n_images == len(films) >= 2
    assert exported.parity.max_abs_prob_diff < 1e-3
