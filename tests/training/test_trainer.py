"""The trainer on tiny synthetic blobs: logs, checkpoints, resume, early stopping, the CLI."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from imaging.preprocess import PreprocessConfig
from training.checkpoint import load_checkpoint
from training.cli_train import main as train_main
from training.config import ConfigError, TrainConfig, config_from_dict, save_config
from training.torch_dataset import DataSplits, Item, SampleDataset, build_splits
from training.trainer import train, train_epoch

SIZE = 32


@dataclass(frozen=True)
class Blob:
    """A synthetic sample: a bright disc (the lesion) in noise; large discs are 'malignant'."""

    id: str
    label: int
    seed: int


def load_blob(sample: Blob) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(sample.seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cy, cx = rng.integers(9, SIZE - 9, size=2)
    radius = 7 if sample.label else 4
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2).astype(np.uint8)  # (H, W)
    image = 0.2 + 0.1 * rng.random((SIZE, SIZE)) + 0.6 * mask  # (H, W)
    return image[..., None].astype(np.float32), mask  # (H, W, 1), (H, W)


def blobs(prefix: str, n: int, offset: int) -> list[Blob]:
    return [Blob(f"{prefix}{i}", i % 2, offset + i) for i in range(n)]


def make_config(out: Path, task: str = "segmentation", **optim: Any) -> TrainConfig:
    classification = task == "classification"
    return config_from_dict(
        {
            "stage": "histopathology" if classification else "ultrasound",
            "task": task,
            "data": {"dataset": "idc" if classification else "busi", "root": str(out)},
            "model": {"name": "tiny" if classification else "unet", "width": 4, "input_size": SIZE},
            "loss": {"malignancy_weight": 0.0 if classification else 0.1},
            "optim": {
                "lr": 0.01,
                "epochs": 2,
                "batch_size": 16,
                "patience": 5,
                "scheduler": "none",  # extending a run would change a cosine schedule
                **optim,
            },
            "device": "cpu",
            "output_dir": str(out),
            "progress": False,
        }
    )


def updated(config: TrainConfig, **changes: Any) -> TrainConfig:
    """A validated copy of ``config`` with top-level ``changes``."""
    return config_from_dict(config.model_dump(mode="json") | changes)


def make_data(config: TrainConfig, augment: str | None = "geometric") -> DataSplits:
    from training.augment import Augmenter

    preprocess, task = config.preprocess, config.task
    augmenter = Augmenter(augment, seed=config.seed) if augment else None

    def split(items: list[Blob], aug: Any) -> SampleDataset:
        return SampleDataset(items, preprocess, task=task, augmenter=aug, load=load_blob)

    return DataSplits(
        split(blobs("t", 16, 0), augmenter),
        split(blobs("v", 8, 100), None),
        split(blobs("s", 8, 200), None),
    )


def unet(config: TrainConfig) -> nn.Module:
    from training.models import build_model

    torch.manual_seed(config.seed)
    return build_model("unet", in_channels=1, width=4, input_size=SIZE, depth=2)


class TinyClassifier(nn.Module):
    """Follows the classification contract: ``{"class_logits": (B, K)}``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"class_logits": self.head(self.features(x).flatten(1))}  # (B, 2)


def read_history(out: Path) -> list[dict[str, str]]:
    with (out / "history.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    config = make_config(out)
    result = train(config, data=make_data(config), model=unet(config))
    assert result.epochs_run == 2 and result.last_epoch == 2 and not result.stopped_early
    return out


def test_two_epochs_write_logs_plots_checkpoints_and_metrics(two_epochs: Path) -> None:
    out = two_epochs
    for name in ("history.csv", "learning_curves.png", "last.pt", "best.pt", "config.yaml"):
        assert (out / name).is_file(), name
    rows = read_history(out)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train_loss", "val_loss", "val_dice", "val_iou", "lr", "seconds"} <= set(rows[0])
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    assert len(header) == len(set(header))
    assert (out / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    last = load_checkpoint(out / "last.pt")
    assert last["epoch"] == 2 and last["monitor"] == "dice"
    assert {"model", "optimizer", "config", "git_commit", "metric"} <= set(last)
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["epochs"] == 2
    report = json.loads((out / "metrics.json").read_text())
    assert report["monitor"] == "dice" and 1 <= report["best_epoch"] <= 2
    assert report["temperature"] > 0  # fitted on the validation malignancy logits
    assert {"dice", "iou", "miou_fg_bg"} <= set(report["test"])
    assert 0.0 <= report["test"]["dice"]["value"] <= 1.0


def test_resume_continues_from_epoch_two_to_three(two_epochs: Path, tmp_path: Path) -> None:
    config = make_config(two_epochs, epochs=3)
    before = load_checkpoint(two_epochs / "last.pt")["model"]
    result = train(config, data=make_data(config), model=unet(config), resume=True)
    assert result.epochs_run == 1 and result.last_epoch == 3
    assert [r["epoch"] for r in read_history(two_epochs)] == ["1", "2", "3"]
    resumed = load_checkpoint(two_epochs / "last.pt")
    assert resumed["epoch"] == 3
    assert any(not torch.equal(resumed["model"][k], v) for k, v in before.items())
    # the same three epochs in one go end with the same weights: nothing started over
    straight_config = make_config(tmp_path, epochs=3)
    train(straight_config, data=make_data(straight_config), model=unet(straight_config))
    straight = load_checkpoint(tmp_path / "last.pt")["model"]
    for key, value in straight.items():
        assert torch.allclose(value.float(), resumed["model"][key].float(), atol=1e-5), key
    losses = [float(r["train_loss"]) for r in read_history(tmp_path)]
    assert losses[-1] < losses[0]  # the loss goes down


def test_early_stopping_on_a_constant_metric(tmp_path: Path) -> None:
    config = make_config(tmp_path, lr=0.0, weight_decay=0.0, epochs=6, patience=1)
    result = train(config, data=make_data(config, augment=None), model=unet(config))
    assert result.stopped_early and result.last_epoch == 2 and result.best_epoch == 1
    assert len(read_history(tmp_path)) == 2


@pytest.mark.gpu
def test_cuda_with_mixed_precision(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    config = updated(make_config(tmp_path, epochs=1), device="cuda", amp=True)
    result = train(config, data=make_data(config), model=unet(config))
    assert result.last_epoch == 1 and (tmp_path / "metrics.json").is_file()
    assert load_checkpoint(tmp_path / "last.pt")["scaler"]  # GradScaler state saved


def test_cuda_requested_without_a_gpu_is_a_config_error(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    config = updated(make_config(tmp_path), device="cuda")
    with pytest.raises(ConfigError, match="no CUDA device"):
        train(config, data=make_data(config), model=unet(config))


def test_classification_with_mixing(tmp_path: Path) -> None:
    config = make_config(tmp_path, task="classification")
    mixing = {"policy": "filter", "cutmix_alpha": 1.0, "mixup_alpha": 0.4, "mix_prob": 1.0}
    config = updated(config, augment=mixing)
    result = train(config, data=make_data(config, augment="filter"), model=TinyClassifier())
    assert result.last_epoch == 2
    rows = read_history(tmp_path)
    assert {"val_balanced_accuracy", "val_auc", "val_accuracy"} <= set(rows[0])
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["monitor"] == "balanced_accuracy"
    assert {"accuracy", "balanced_accuracy", "auc"} <= set(report["test"])
    # the decision threshold is chosen on validation for balanced accuracy (the card's)
    choice = report["decision_threshold"]
    assert 0.0 < choice["threshold"] < 1.0 and choice["n"] == 8
    assert choice["temperature"] == pytest.approx(report["temperature"])


def test_dataset_augments_training_items_deterministically() -> None:
    preprocess = PreprocessConfig(input_size=(SIZE, SIZE), channels=1)
    from training.augment import Augmenter
    from training.config import Task

    aug = Augmenter("all", seed=0)
    data = SampleDataset(
        [Item(b) for b in blobs("a", 4, 0)] + [Item(Blob("a0", 0, 0), copy=2)],
        preprocess,
        task=Task.SEGMENTATION,
        augmenter=aug,
        copy_augmenter=aug,
        load=load_blob,
    )
    first = data[0]
    assert first["image"].shape == (1, SIZE, SIZE) and first["mask"].shape == (1, SIZE, SIZE)
    assert set(torch.unique(first["mask"]).tolist()) <= {0.0, 1.0}
    assert torch.equal(data[0]["image"], first["image"])
    changed = []
    for epoch in range(1, 6):
        data.set_epoch(epoch)
        changed.append(not torch.equal(data[0]["image"], first["image"]))
    assert any(changed)
    plain = SampleDataset(blobs("a", 1, 0), preprocess, task=Task.SEGMENTATION, load=load_blob)
    image, _ = load_blob(Blob("a0", 0, 0))
    assert torch.allclose(plain[0]["image"][0], torch.from_numpy(image[..., 0]))  # no augmenter


def busi_config(tmp_path: Path, **data: Any) -> TrainConfig:
    from training.data.synthetic import make_busi

    root = make_busi(tmp_path / "busi", n=12, seed=0, duplicates=0)
    fractions = {"train": 0.5, "val": 0.25, "test": 0.25}
    return config_from_dict(
        {
            "stage": "ultrasound",
            "task": "segmentation",
            "data": {"dataset": "busi", "root": str(root), "fractions": fractions, **data},
            "model": {"name": "unet", "width": 4, "input_size": SIZE, "options": {"depth": 2}},
            "augment": {"policy": "all"},
            "optim": {"epochs": 1, "batch_size": 4},
            "device": "cpu",
            "output_dir": str(tmp_path / "run"),
        }
    )


def test_paper_protocol_copies_are_regenerated_identically(tmp_path: Path) -> None:
    config = busi_config(tmp_path, protocol="paper", paper_copies=3)
    splits = build_splits(config)
    sides = [splits.train, splits.val, splits.test]
    assert sum(len(s) for s in sides if s is not None) == 12 * 3  # copies before the split
    train_items = splits.train.items  # type: ignore[attr-defined]
    index = next(i for i, item in enumerate(train_items) if item.copy > 0)
    first = splits.train[index]
    splits.train.set_epoch(7)  # type: ignore[attr-defined]
    assert torch.equal(splits.train[index]["image"], first["image"])  # fixed, not per epoch
    again = build_splits(config).train[index]
    assert torch.equal(again["image"], first["image"]) and torch.equal(again["mask"], first["mask"])
    assert (tmp_path / "run" / "split.json").is_file()


def test_leakage_safe_split_augments_only_training(tmp_path: Path) -> None:
    splits = build_splits(busi_config(tmp_path))
    assert splits.train.augmenter is not None  # type: ignore[attr-defined]
    assert splits.val.augmenter is None and splits.test.augmenter is None  # type: ignore[union-attr]
    ids = {n: {it.sample.id for it in getattr(splits, n).items} for n in ("train", "val", "test")}
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["val"])


def test_cli_trains_on_a_synthetic_busi_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = busi_config(tmp_path)
    cfg = tmp_path / "cfg.yaml"
    save_config(config, cfg)
    assert train_main(["--config", str(cfg), "--no-progress", "optim.lr=0.005"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["last_epoch"] == 1 and Path(summary["metrics_file"]).is_file()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 0.005 and saved["progress"] is False


def test_cli_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "stage": "ultrasound",
                "task": "segmentation",
                "data": {"dataset": "busi", "root": "x"},
            }
        )
    )
    assert train_main(["--config", str(cfg), "optim.learning_rate=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'optim.learning_rate'" in err and "lr" in err
    assert train_main(["--config", str(tmp_path / "absent.yaml")]) == 2


def test_cpu_bf16_channels_last_ema_resume_matches_a_straight_run(tmp_path: Path) -> None:
    """The CPU speed options train, checkpoint the averaged weights as ``model`` (the raw ones
    as ``raw_model``) and resume to exactly what an uninterrupted run gives."""
    options = {"amp": True, "channels_last": True, "ema_decay": 0.9, "threads": 1}
    first = updated(make_config(tmp_path / "a"), **options)
    train(first, data=make_data(first), model=unet(first))
    state = load_checkpoint(tmp_path / "a" / "last.pt")
    assert set(state) >= {"model", "raw_model"}
    assert any(not torch.equal(state["model"][k], state["raw_model"][k]) for k in state["model"])
    resumed_config = updated(make_config(tmp_path / "a", epochs=3), **options)
    train(resumed_config, data=make_data(resumed_config), model=unet(resumed_config), resume=True)
    straight = updated(make_config(tmp_path / "b", epochs=3), **options)
    train(straight, data=make_data(straight), model=unet(straight))
    a = load_checkpoint(tmp_path / "a" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    for key in ("model", "raw_model"):
        for name, value in b[key].items():
            assert torch.allclose(value.float(), a[key][name].float(), atol=1e-5), (key, name)
    assert [r["epoch"] for r in read_history(tmp_path / "a")] == ["1", "2", "3"]


def test_time_budget_stops_after_the_epoch_that_passes_it(tmp_path: Path) -> None:
    config = updated(make_config(tmp_path, epochs=50), time_budget_min=1e-4)
    result = train(config, data=make_data(config), model=unet(config))
    assert result.last_epoch == 1 and result.stopped_early


class KilledError(Exception):
    """The process training a run died (stands for a kill: the checkpoints stay as they were)."""


class EpochClock:
    """A stand-in for the trainer's ``time``: the clock moves only while an epoch trains, by
    ``first_s`` for a process's first epoch (the one that fills the decode cache), ``then_s`` for
    each one after; ``stop_at``: the epoch whose training is interrupted (a killed process)."""

    def __init__(self, first_s: float, then_s: float, stop_at: int | None = None) -> None:
        self.now, self.epochs, self.first_s, self.then_s, self.stop_at = (
            0.0,
            0,
            first_s,
            then_s,
            stop_at,
        )

    def monotonic(self) -> float:
        return self.now

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import training.trainer as trainer

        real = train_epoch  # the trainer's own, not an earlier clock's stand-in

        def timed(run: Any, epoch: int) -> float:
            if epoch == self.stop_at:
                raise KilledError(f"killed in epoch {epoch}")
            loss = real(run, epoch)
            self.now += self.first_s if self.epochs == 0 else self.then_s
            self.epochs += 1
            return loss

        monkeypatch.setattr(trainer, "time", self)
        monkeypatch.setattr(trainer, "train_epoch", timed)


def budget_config(out: Path, fit: bool) -> TrainConfig:
    """20 cosine epochs in a 10-minute budget at 120 s for the first epoch and 60 s after: 9 fit."""
    config = make_config(out, epochs=20, scheduler="cosine", patience=50)
    return updated(config, time_budget_min=10.0, time_budget_fit=fit)


def test_time_budget_fit_anneals_the_schedule_by_the_last_epoch_that_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the fit a slow machine stops the cosine mid-way (learning rate still 0.65 of its
    start); with it the same 9 epochs end the schedule (its last learning rate near 0), and the
    checkpoint keeps the shortened schedule."""
    rates = {}
    for fit in (False, True):
        EpochClock(120.0, 60.0).install(monkeypatch)
        config = budget_config(tmp_path / str(fit), fit)
        result = train(config, data=make_data(config), model=unet(config))
        assert result.last_epoch == 9 and result.stopped_early is not fit
        rates[fit] = [float(r["lr"]) for r in read_history(tmp_path / str(fit))]
    assert rates[False][:3] == pytest.approx(rates[True][:3])  # fitted after epoch 2
    assert rates[False][-1] == pytest.approx(0.01 * 0.5 * (1 + np.cos(np.pi * 8 / 20)))
    assert rates[True][-1] < 0.001 and rates[True] == sorted(rates[True], reverse=True)
    state = load_checkpoint(tmp_path / "True" / "last.pt")
    assert state["fitted_epochs"] == 9 and state["scheduler"]["T_max"] == 9
    assert load_checkpoint(tmp_path / "False" / "last.pt")["fitted_epochs"] is None


def test_a_fitted_run_resumes_to_its_fitted_end_as_a_straight_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed in epoch 3, right after the fit (epoch 2's checkpoint must carry it), and resumed
    (a new process: its first epoch is slow again), a run fitted to 9 epochs ends at 9, not at
    the config's 20, with the straight run's learning rates; a finished fitted run resumed
    trains nothing."""
    EpochClock(120.0, 60.0).install(monkeypatch)
    straight = budget_config(tmp_path / "straight", fit=True)
    train(straight, data=make_data(straight), model=unet(straight))
    config = budget_config(tmp_path / "killed", fit=True)
    EpochClock(120.0, 60.0, stop_at=3).install(monkeypatch)
    with pytest.raises(KilledError):
        train(config, data=make_data(config), model=unet(config))
    EpochClock(120.0, 60.0).install(monkeypatch)
    result = train(config, data=make_data(config), model=unet(config), resume=True)
    assert (result.epochs_run, result.last_epoch, result.stopped_early) == (7, 9, False)
    lr = [float(r["lr"]) for r in read_history(tmp_path / "killed")]
    assert lr == pytest.approx([float(r["lr"]) for r in read_history(tmp_path / "straight")])
    again = train(config, data=make_data(config), model=unet(config), resume=True)
    assert again.epochs_run == 0 and again.last_epoch == 9


def test_time_budget_fit_needs_a_budget(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="time_budget_fit"):
        updated(make_config(tmp_path), time_budget_fit=True)


def test_cached_dataset_decodes_each_item_once() -> None:
    calls: list[str] = []

    def counting_load(sample: Blob) -> tuple[np.ndarray, np.ndarray]:
        calls.append(sample.id)
        return load_blob(sample)

    config = make_config(Path("unused"))
    from training.augment import Augmenter

    data = SampleDataset(
        blobs("c", 4, 0),
        config.preprocess,
        task=config.task,
        augmenter=Augmenter("geometric", seed=0),
        load=counting_load,
        cache=True,
    )
    first = [data[i]["image"].clone() for i in range(4)]
    data.set_epoch(1)
    second = [data[i]["image"] for i in range(4)]
    assert sorted(calls) == ["c0", "c1", "c2", "c3"]  # decoded once each
    assert any(not torch.equal(a, b) for a, b in zip(first, second, strict=True))  # re-augmented


def test_lesion_malignancy_map_is_trained_inside_lesions_only(tmp_path: Path) -> None:
    from training.models import build_model
    from training.steps import lesion_malignancy_loss

    config = updated(
        make_config(tmp_path), loss={"malignancy_weight": 0.1, "lesion_malignancy_weight": 1.0}
    )
    torch.manual_seed(0)
    model = build_model(
        "unet", in_channels=1, width=4, input_size=SIZE, depth=2, lesion_malignancy=True
    )
    assert model.output_names == ("mask_logits", "malignancy_logit", "lesion_malignancy_logits")
    train(config, data=make_data(config), model=model)
    # the loss: pixels outside the lesion and images without a lesion add nothing
    logits = torch.zeros(2, 1, 4, 4)
    logits[0, 0, 0, 0] = 10.0  # inside image 0's lesion, predicted malignant
    logits[1] = -50.0  # image 1 has no lesion: ignored
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, 0, 0, :2] = 1.0
    label = torch.tensor([1, 0])
    expected = (np.log1p(np.exp(-10.0)) + np.log(2.0)) / 2  # BCE at logit 10 and at 0, target 1
    assert lesion_malignancy_loss(logits, mask, label).item() == pytest.approx(expected, rel=1e-5)
    assert lesion_malignancy_loss(logits, torch.zeros_like(mask), label).item() == 0.0


def load_blob_or_background(sample: Blob) -> tuple[np.ndarray, np.ndarray]:
    """``load_blob``, but samples whose id starts with ``n`` hold no lesion (noise only)."""
    image, mask = load_blob(sample)
    if not sample.id.startswith("n"):
        return image, mask
    rng = np.random.default_rng(sample.seed)
    background = 0.2 + 0.1 * rng.random((SIZE, SIZE))  # (H, W)
    return background[..., None].astype(np.float32), np.zeros_like(mask)


def test_presence_head_trains_alone_on_top_of_a_frozen_network(tmp_path: Path) -> None:
    """``train_only: [presence_head]``: the head learns "this image holds a lesion" while every
    other weight and batch-norm statistic stays exactly as it was."""
    from training.models import build_model
    from training.steps import presence_loss

    config = updated(
        make_config(tmp_path, epochs=3),
        model={"name": "unet", "width": 4, "input_size": SIZE, "options": {"presence": True}},
        loss={"malignancy_weight": 0.1, "presence_weight": 1.0},
        train_only=["presence_head"],
        monitor="presence_auc",
    )
    torch.manual_seed(0)
    model = build_model("unet", in_channels=1, width=4, input_size=SIZE, presence=True)
    assert model.output_names == ("mask_logits", "malignancy_logit", "presence_logit")
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def split(items: list[Blob]) -> SampleDataset:
        return SampleDataset(
            items, config.preprocess, task=config.task, load=load_blob_or_background
        )

    lesion_free = [Blob(f"n{i}", 0, 300 + i) for i in range(12)]
    data = DataSplits(
        split(blobs("t", 16, 0) + lesion_free[:8]),
        split(blobs("v", 8, 100) + lesion_free[8:]),
        split(blobs("s", 4, 200)),
    )
    result = train(config, data=data, model=model)
    after = model.state_dict()
    for key, value in before.items():
        if key.startswith("presence_head."):
            continue
        assert torch.equal(value, after[key]), f"{key} changed in a presence-head-only run"
    head = "presence_head.linear.weight"
    assert not torch.equal(before[head], after[head])
    with (result.output_dir / "history.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and all(0.0 <= float(r["val_presence_auc"]) <= 1.0 for r in rows)
    # the loss: BCE against whether each true mask holds a lesion pixel
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, 0, 1, 1] = 1.0
    logits = torch.tensor([[2.0], [-3.0]])
    expected = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-3.0))) / 2
    assert presence_loss(logits, mask).item() == pytest.approx(expected, rel=1e-5)


def test_train_only_and_presence_monitor_are_checked(tmp_path: Path) -> None:
    from training.models import build_model
    from training.trainer import trainable_parameters

    with pytest.raises(ConfigError, match="presence head"):
        updated(make_config(tmp_path), monitor="presence_auc")
    with pytest.raises(ConfigError, match="presence head"):
        updated(make_config(tmp_path), loss={"presence_weight": 1.0})
    model = build_model("unet", in_channels=1, width=4, input_size=SIZE)
    with pytest.raises(ConfigError, match=r"'head' names no parameter.*malignancy_head"):
        trainable_parameters(model, ["head"])
    params = trainable_parameters(model, ["malignancy_head"])
    assert len(params) == 2  # the linear layer's weight and bias
    assert sum(p.requires_grad for p in model.parameters()) == 2


def test_an_undefined_monitor_is_a_typed_error(tmp_path: Path) -> None:
    """presence_auc over a validation split whose images all hold a lesion is undefined: the run
    stops with a ConfigError naming the monitor, not a run that never saves a best checkpoint."""
    from training.models import build_model

    config = updated(
        make_config(tmp_path, epochs=1),
        model={"name": "unet", "width": 4, "input_size": SIZE, "options": {"presence": True}},
        loss={"presence_weight": 1.0},
        monitor="presence_auc",
    )
    model = build_model("unet", in_channels=1, width=4, input_size=SIZE, presence=True)
    with pytest.raises(ConfigError, match="'presence_auc' is undefined on this validation split"):
        train(config, data=make_data(config), model=model)  # blobs only: every image a lesion
