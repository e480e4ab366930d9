"""The training loop: one ``train(config)`` for every stage, on CPU or CUDA.

AdamW, optional cosine or plateau schedule, mixed precision with a gradient scaler on CUDA only,
a time budget (``time_budget_min``: the run stops before an epoch would pass it; with
``time_budget_fit`` a machine too slow for every epoch ends a shortened schedule there instead),
early stopping on a validation metric (Dice for segmentation, balanced accuracy or AUC for
classification), ``last.pt``/``best.pt`` checkpoints with resume, a per-epoch CSV log,
learning-curve plots, and a final evaluation of the best weights on the test split written to
``metrics.json``. Every random draw derives from ``(config.seed, epoch)``, so a resumed run
continues exactly as an uninterrupted one would.

Model contract: segmentation models return ``{"mask_logits": (B, 1, H, W), "malignancy_logit":
(B, 1)}``, classification models ``{"class_logits": (B, K)}``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training import checkpoint as ckpt
from training.calibration import fit_temperature
from training.config import (
    ConfigError,
    Device,
    Scheduler,
    Task,
    TrainConfig,
    config_to_dict,
    save_config,
)
from training.logs import CURVES, HISTORY, EpochLog, plot_curves, progress
from training.mix import BatchMixer
from training.steps import Criterion, EvalOutput, build_criterion, evaluate, jsonable, summarise
from training.steps import report as report_metrics
from training.torch_dataset import DataSplits

logger = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced; every path lies under ``output_dir``."""

    output_dir: Path
    epochs_run: int  # epochs trained by this call (0 when a resumed run was already complete)
    last_epoch: int
    best_epoch: int
    best_metric: float
    stopped_early: bool
    test_metrics: dict[str, Any]
    best_checkpoint: Path
    last_checkpoint: Path
    metrics_file: Path | None


@dataclass
class _Run:
    config: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    device: torch.device
    amp: bool
    criterion: Criterion
    mixer: BatchMixer | None
    train_loader: DataLoader[dict[str, Any]]
    val_loader: DataLoader[dict[str, Any]]
    shuffle: torch.Generator
    stopper: ckpt.EarlyStopping
    out: Path
    horizon: int  # the run's last epoch: optim.epochs, or fewer where fitted to a time budget
    ema: torch.optim.swa_utils.AveragedModel | None = None

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated, checkpointed as ``model`` and exported."""
        return self.ema.module if self.ema is not None else self.model

    def autocast(self) -> Any:
        """Mixed precision: float16 on CUDA, bfloat16 on CPU (AVX512-BF16 / AMX)."""
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.amp)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        if self.config.channels_last and batch["image"].dim() == 4:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        return batch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; ask cuDNN for deterministic kernels where that is cheap."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def resolve_device(device: Device) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device is Device.CUDA and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but no CUDA device is available")
    if device is Device.CPU or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def _loader(
    data: Dataset[dict[str, Any]], config: TrainConfig, shuffle: torch.Generator | None
) -> DataLoader[dict[str, Any]]:
    training = shuffle is not None
    # Training drops a ragged last batch: a batch of one breaks BatchNorm (e.g. DeepLabV3's
    # image-pooling branch); kept when the whole set is smaller than one batch.
    drop_last = training and len(data) > config.optim.batch_size  # type: ignore[arg-type]
    return DataLoader(
        data,
        batch_size=config.optim.batch_size,
        shuffle=training,
        generator=shuffle,
        num_workers=config.num_workers,
        pin_memory=config.device is not Device.CPU and torch.cuda.is_available(),
        drop_last=drop_last,
    )


def _scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer) -> Any:
    if config.optim.scheduler is Scheduler.COSINE:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.optim.epochs)
    if config.optim.scheduler is Scheduler.PLATEAU:
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", patience=2)
    return None


def _amp(config: TrainConfig, device: torch.device, model: nn.Module) -> bool:
    """Whether the run uses autocast: the config's flag, CUDA's default, or on a CPU with
    ``amp: auto`` what a few timed training steps say is faster (``training.amp_choice``;
    measured again when a run resumes), float32 untimed on a CPU without bf16 units."""
    if config.amp != "auto":
        return config.amp if config.amp is not None else device.type == "cuda"
    if device.type != "cpu":
        return True
    from training import amp_choice

    if amp_choice.lacks_bf16_units():
        logger.info("amp: auto chose float32 (no bf16 units on this CPU, AVX512-BF16 or AMX: "
                    "bf16 autocast would be emulated; not timed)")  # fmt: skip
        return False
    side = config.crops.size if config.crops is not None else None
    height, width = (side, side) if side else config.preprocess.input_size
    shape = (config.optim.batch_size, config.preprocess.channels, height, width)
    timing = amp_choice.bf16_is_faster(model, shape, channels_last=config.channels_last)
    logger.info("amp: auto chose %s", timing.describe())
    return timing.bf16


def _setup(config: TrainConfig, data: DataSplits, model: nn.Module) -> _Run:
    device = resolve_device(config.device)
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp = _amp(config, device, model)
    ema = None
    if config.ema_decay is not None:
        avg = torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay)
        ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=avg, use_buffers=True)
    optimizer = torch.optim.AdamW(
        trainable_parameters(model, config.train_only),
        lr=config.optim.lr,
        weight_decay=config.optim.weight_decay,
    )
    mixer = None
    if config.task is Task.CLASSIFICATION:
        aug = config.augment
        mixer = BatchMixer(config.num_classes, aug.mixup_alpha, aug.cutmix_alpha, aug.mix_prob)
    shuffle = torch.Generator().manual_seed(config.seed)
    return _Run(
        config=config,
        model=model,
        optimizer=optimizer,
        scheduler=_scheduler(config, optimizer),
        scaler=torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda"),
        device=device,
        amp=amp,
        criterion=build_criterion(config),
        mixer=mixer if mixer is not None and mixer.enabled else None,
        train_loader=_loader(data.train, config, shuffle),
        val_loader=_loader(data.val, config, None),
        shuffle=shuffle,
        stopper=ckpt.EarlyStopping(config.optim.patience),
        out=Path(config.output_dir),
        horizon=config.optim.epochs,
        ema=ema,
    )


def _trains(name: str, prefixes: list[str]) -> bool:
    return not prefixes or any(name == p or name.startswith(p + ".") for p in prefixes)


def trainable_parameters(model: nn.Module, prefixes: list[str]) -> list[nn.Parameter]:
    """The parameters under the module names ``prefixes`` (all of them where it is empty); the
    others stop taking gradients. Raises ``ConfigError`` when a prefix names no parameter."""
    named = list(model.named_parameters())
    for prefix in prefixes:
        if not any(_trains(name, [prefix]) for name, _ in named):
            modules = sorted({name.split(".")[0] for name, _ in named})
            raise ConfigError(
                f"train_only: {prefix!r} names no parameter of the model; its modules are "
                + ", ".join(modules)
            )
    for name, param in named:
        param.requires_grad_(_trains(name, prefixes))
    return [param for _, param in named if param.requires_grad]


def _train_mode(model: nn.Module, prefixes: list[str]) -> None:
    """Training mode for the modules that train; frozen ones keep eval behaviour (batch norms
    use and keep their running statistics, dropouts pass everything)."""
    model.train()
    if not prefixes:
        return
    for name, module in model.named_modules():
        if (
            name
            and not _trains(name, prefixes)
            and not any(p.startswith(name + ".") for p in prefixes)
        ):
            module.eval()


def _set_epoch(loader: DataLoader[dict[str, Any]], epoch: int) -> None:
    set_epoch = getattr(loader.dataset, "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch)


def train_epoch(run: _Run, epoch: int) -> float:
    """One pass over the training split; returns the mean loss per sample."""
    _train_mode(run.model, run.config.train_only)
    epoch_seed = int(np.random.SeedSequence([run.config.seed, epoch]).generate_state(1)[0])
    run.shuffle.manual_seed(epoch_seed)  # batch order
    torch.manual_seed(epoch_seed)  # dropout and other in-model draws
    _set_epoch(run.train_loader, epoch)  # per-sample augmentation seeds
    rng = np.random.default_rng(epoch_seed)  # MixUp / CutMix
    total, count = 0.0, 0
    batches = progress(
        run.train_loader,
        enabled=run.config.progress,
        total=len(run.train_loader),
        desc=f"epoch {epoch}",
    )
    for batch in batches:
        batch = run.to_device(batch)
        if run.mixer is not None:
            mixed = run.mixer(batch["image"], batch["label"], rng)
            batch["image"], batch["soft_label"] = mixed.inputs, mixed.targets
        with run.autocast():
            outputs = run.model(batch["image"])
            loss = run.criterion(outputs, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at epoch {epoch}")
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if run.ema is not None:
            run.ema.update_parameters(run.model)
        size = int(batch["image"].shape[0])
        total, count = total + float(loss.detach()) * size, count + size
    return total / max(count, 1)


def _checkpoint_state(run: _Run, epoch: int, metric: float, commit: str | None) -> dict[str, Any]:
    raw = {}
    if run.ema is not None:  # "model" holds the averaged weights (exported); these resume
        raw = {"raw_model": run.model.state_dict(), "ema": run.ema.state_dict()}
    return raw | {
        "model": run.eval_model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "scaler": run.scaler.state_dict(),
        "epoch": epoch,
        "metric": metric,
        "monitor": run.config.monitor_metric,
        "early_stopping": run.stopper.state_dict(),
        "fitted_epochs": run.horizon if run.horizon < run.config.optim.epochs else None,
        "config": config_to_dict(run.config),
        "git_commit": commit,
        "hardware": _hardware(run),
    }


def _resume(run: _Run, path: Path) -> int:
    state = ckpt.load_checkpoint(path, map_location=run.device)
    run.model.load_state_dict(state.get("raw_model", state["model"]))
    if run.ema is not None and "ema" in state:
        run.ema.load_state_dict(state["ema"])  # with its update count
    run.optimizer.load_state_dict(state["optimizer"])
    if run.scheduler is not None and state.get("scheduler") is not None:
        run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    run.stopper.load_state_dict(state["early_stopping"])
    if state.get("fitted_epochs"):  # the schedule was fitted to a time budget: it stays short
        run.horizon = min(run.horizon, int(state["fitted_epochs"]))
    logger.info("resumed from %s at epoch %d", path, state["epoch"])
    changed = _changed_keys(state.get("config", {}), config_to_dict(run.config))
    if changed:
        logger.warning("resuming with a changed config (%s); a cosine schedule keeps its "
                       "original length", ", ".join(changed))  # fmt: skip
    return int(state["epoch"])


def _changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    changed = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(prefix + key)
    return changed


def _step_scheduler(run: _Run, metric: float) -> None:
    if isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        run.scheduler.step(metric)
    elif run.scheduler is not None:
        run.scheduler.step()


def _one_epoch(run: _Run, epoch: int, commit: str | None) -> dict[str, float]:
    """Train, validate, step the schedule, checkpoint; returns the epoch's CSV row."""
    monitor = run.config.monitor_metric
    began = time.monotonic()
    lr = float(run.optimizer.param_groups[0]["lr"])
    train_loss = train_epoch(run, epoch)
    val = evaluate(run.eval_model, run.val_loader, run.criterion, run.device, run.amp)
    metrics = summarise(run.config.task, val)
    if not np.isfinite(metrics[monitor]):  # e.g. an AUC over a split of one kind of image
        raise ConfigError(
            f"monitor {monitor!r} is undefined on this validation split (value "
            f"{metrics[monitor]}): an AUC needs images of both kinds; monitor another metric"
        )
    improved = run.stopper.update(metrics[monitor], epoch)
    _step_scheduler(run, metrics[monitor])
    state = _checkpoint_state(run, epoch, metrics[monitor], commit)
    ckpt.save_checkpoint(run.out / ckpt.LAST, state)
    if improved:
        ckpt.save_checkpoint(run.out / ckpt.BEST, state)
    row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val.loss, "lr": lr}
    row |= {f"val_{k}": v for k, v in metrics.items()}
    seconds = time.monotonic() - began
    images = len(run.train_loader) * run.config.optim.batch_size
    return row | {"seconds": seconds, "train_img_per_s": images / max(seconds, 1e-9)}


def _fit(run: _Run, start: int, commit: str | None) -> tuple[int, bool]:
    """Epochs ``start + 1 .. run.horizon``; returns the last epoch and whether it stopped early
    (on its monitor, or where the time budget ended it before its schedule did)."""
    monitor, total = run.config.monitor_metric, run.horizon
    epochs = progress(
        range(start + 1, total + 1), enabled=run.config.progress, total=total - start, desc="run"
    )
    log: EpochLog | None = None
    epoch = start
    began, budget = time.monotonic(), run.config.time_budget_min
    seconds: list[float] = []
    for epoch in epochs:
        row = _one_epoch(run, epoch, commit)
        names = [k[4:] for k in row if k.startswith("val_") and k != "val_loss"]
        log = log or EpochLog(run.out / HISTORY, names)
        log.append(row)
        plot_curves(log.read(), monitor, run.out / CURVES)
        elapsed = time.monotonic() - began
        seconds.append(row["seconds"])
        pace = epoch_pace(seconds)
        if budget is not None and run.config.time_budget_fit and len(seconds) > 1:
            horizon = fitted_horizon(run.horizon, epoch, elapsed, pace, budget)
            if _fit_to_budget(run, horizon, pace):  # the epoch's checkpoint predates it
                state = _checkpoint_state(run, epoch, row[f"val_{monitor}"], commit)
                ckpt.save_checkpoint(run.out / ckpt.LAST, state)
        logger.info(
            "epoch %d/%d: train loss %.4f, val loss %.4f, val %s %.4f (best %.4f at %d); "
            "%.0f s, %.1f img/s, elapsed %s, ETA %s",
            epoch, run.horizon, row["train_loss"], row["val_loss"], monitor,
            row[f"val_{monitor}"], run.stopper.best, run.stopper.best_epoch, row["seconds"],
            row["train_img_per_s"], _clock(elapsed), _clock(pace * (run.horizon - epoch)),
        )  # fmt: skip
        if epoch >= run.horizon:
            return epoch, False  # the schedule, fitted to the budget, ends here
        if budget is not None and elapsed + pace > budget * 60:
            logger.info("time budget of %.0f min reached after epoch %d", budget, epoch)
            return epoch, True
        if run.stopper.should_stop:
            logger.info("early stop: no better %s for %d epochs", monitor, run.stopper.patience)
            return epoch, True
    return epoch, run.stopper.should_stop


def epoch_pace(seconds: list[float]) -> float:
    """Seconds an epoch from this process's epochs: the mean, leaving out the first (which fills
    the decode cache) once there are others."""
    return float(np.mean(seconds[1:] if len(seconds) > 1 else seconds))


def fitted_horizon(
    horizon: int, epoch: int, elapsed_s: float, pace_s: float, budget_min: float
) -> int:
    """The last epoch of a schedule fitted to a time budget: this epoch plus the whole epochs
    that fit in what is left of the budget at ``pace_s`` an epoch; never later than ``horizon``
    (the schedule only shortens, so its learning rate never rises again) nor before ``epoch``."""
    left = budget_min * 60 - elapsed_s
    fits = epoch + max(int(left // pace_s), 0) if pace_s > 0 else horizon
    return max(epoch, min(horizon, fits))


def _fit_to_budget(run: _Run, horizon: int, pace_s: float) -> bool:
    """Shorten the run to ``horizon`` epochs (a cosine schedule then anneals to 0 there); True
    when that changed it."""
    if horizon >= run.horizon:
        return False
    logger.info(
        "time budget of %.0f min: the schedule fitted to %d of %d epochs (%.0f s an epoch here)",
        run.config.time_budget_min, horizon, run.config.optim.epochs, pace_s,
    )  # fmt: skip
    run.horizon = horizon
    if isinstance(run.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
        # stepped once per epoch, recursively: from here on it follows a cosine to 0 at horizon
        run.scheduler.T_max = horizon
    return True


def _hardware(run: _Run) -> str:
    """Where the run trains, for the card: device, CPU model and torch threads."""
    import platform

    if run.device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(run.device)}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu}, {torch.get_num_threads()} torch thread(s), amp={run.amp}"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def build_model(config: TrainConfig) -> nn.Module:
    """The configured network from ``training.models``."""
    from training.models import build_model as build

    model = config.model
    return build(
        model.name,
        in_channels=model.in_channels,
        num_classes=model.num_classes,
        width=model.width,
        input_size=model.input_size,
        pretrained=model.pretrained,
        **model.options,
    )


def _temperature(val: EvalOutput) -> float | None:
    """Temperature fitted on validation logits (Guo et al. 2017); None without both classes."""
    known = val.labels[val.labels >= 0]
    if len(np.unique(known)) < 2:
        return None
    return float(fit_temperature(val.logits, val.labels))


def _final_evaluation(
    run: _Run,
    test: Dataset[dict[str, Any]] | None,
    out: Path,
    val: EvalOutput | None = None,
) -> dict[str, Any]:
    """Best weights on validation (temperature, metrics) and on the test split -> metrics.json.
    ``val``: the best weights' validation outputs where the caller already has them (loaded)."""
    best_path = out / ckpt.BEST if (out / ckpt.BEST).is_file() else out / ckpt.LAST  # NaN metric
    best = ckpt.load_checkpoint(best_path, map_location=run.device)
    if val is None:
        run.eval_model.load_state_dict(best["model"])
        val = evaluate(run.eval_model, run.val_loader, run.criterion, run.device, run.amp)
    temperature = _temperature(val)
    report: dict[str, Any] = {
        "monitor": run.config.monitor_metric,
        "best_epoch": best["epoch"],
        "best_val_metric": best["metric"],
        "temperature": temperature,
        "git_commit": best.get("git_commit"),
        "val": summarise(run.config.task, val, temperature or 1.0),
        "test": None,
    }
    if run.config.task is Task.CLASSIFICATION and temperature is not None:
        from dataclasses import asdict

        from training.calibration import decision_threshold

        choice = decision_threshold(val.logits, val.labels, temperature)
        report["decision_threshold"] = asdict(choice)  # balanced accuracy on validation
    if test is not None and len(test) > 0:  # type: ignore[arg-type]
        test_out = evaluate(
            run.eval_model, _loader(test, run.config, None), run.criterion, run.device, run.amp
        )
        report["test"] = report_metrics(run.config.task, test_out, temperature or 1.0)
        report["test_loss"] = test_out.loss
    (out / METRICS_FILE).write_text(json.dumps(jsonable(report), indent=2), encoding="utf-8")
    return report


def train(
    config: TrainConfig,
    *,
    data: DataSplits | None = None,
    model: nn.Module | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train, checkpoint, evaluate; ``resume`` continues from ``output_dir/last.pt``.

    Args:
        config: the resolved configuration (see ``training.config.load_config``).
        data: the splits; read from ``config.data`` when None.
        model: the network; built from ``config.model`` when None.
        resume: continue a run whose ``last.pt`` exists (epochs up to ``optim.epochs``).
    """
    seed_everything(config.seed)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    # Denormal floats are slow on x86 CPUs: flushed to zero while this run trains, and the
    # process-wide setting restored afterwards (other code in the process may rely on them).
    flush = resolve_device(config.device).type == "cpu" and torch.set_flush_denormal(True)
    try:
        return _train(config, data, model, resume)
    finally:
        if flush:
            torch.set_flush_denormal(False)


def score_fixed(config: TrainConfig, model: nn.Module, extra: dict[str, Any]) -> dict[str, Any]:
    """Score weights trained elsewhere (an ensemble of finished runs) as a finished run.

    ``output_dir`` gets what a training run leaves for export: ``config.yaml``, ``split.json``,
    ``best.pt`` (epoch 0, the monitored metric on validation, ``extra`` merged into it, e.g. the
    members' hardware and training time) and ``metrics.json`` (temperature and decision threshold
    fitted on validation, validation and test figures). Nothing trains. Returns the report.
    """
    seed_everything(config.seed)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    from training.torch_dataset import build_splits

    data = build_splits(config)
    run = _setup(config, data, model)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / ckpt.CONFIG)
    for name in (HISTORY, CURVES, ckpt.LAST, ckpt.BEST, METRICS_FILE):
        (out / name).unlink(missing_ok=True)
    val = evaluate(run.eval_model, run.val_loader, run.criterion, run.device, run.amp)
    monitor = config.monitor_metric
    metric = summarise(config.task, val)[monitor]
    logger.info("fixed weights: val %s %.4f", monitor, metric)
    state = _checkpoint_state(run, 0, metric, ckpt.git_commit()) | extra
    ckpt.save_checkpoint(out / ckpt.BEST, state)
    return _final_evaluation(run, data.test, out, val=val)


def _train(
    config: TrainConfig,
    data: DataSplits | None,
    model: nn.Module | None,
    resume: bool,
) -> TrainResult:
    if data is None:
        from training.torch_dataset import build_splits

        data = build_splits(config)
    run = _setup(config, data, model if model is not None else build_model(config))
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / ckpt.CONFIG)
    start = 0
    if resume and (out / ckpt.LAST).is_file():
        start = _resume(run, out / ckpt.LAST)
        EpochLog(out / HISTORY, []).truncate_after(start)
    else:  # a fresh run: nothing of an earlier run in this folder may be mistaken for its own
        for name in (HISTORY, CURVES, ckpt.LAST, ckpt.BEST, METRICS_FILE):
            (out / name).unlink(missing_ok=True)
    done = start >= run.horizon or (start > 0 and run.stopper.should_stop)
    last, stopped = (
        (start, run.stopper.should_stop) if done else _fit(run, start, ckpt.git_commit())
    )
    report = _final_evaluation(run, data.test, out)
    return TrainResult(
        output_dir=out,
        epochs_run=last - start,
        last_epoch=last,
        best_epoch=run.stopper.best_epoch,
        best_metric=run.stopper.best,
        stopped_early=stopped,
        test_metrics=report["test"] or {},
        best_checkpoint=out / ckpt.BEST,
        last_checkpoint=out / ckpt.LAST,
        metrics_file=out / METRICS_FILE,
    )
