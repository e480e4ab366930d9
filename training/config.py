"""Typed training configuration: frozen pydantic models from YAML plus ``a.b=value`` overrides.

Every section forbids unknown keys, so a typo fails with the list of valid keys instead of being
ignored. The resolved configuration is written beside each checkpoint (``save_config``) so a run
can be repeated and a model carries the preprocessing it was trained with.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from breastdx.errors import BreastdxError
from imaging.preprocess import PreprocessConfig
from models_registry.card import Stage  # one Stage enum: the registry's (torch-free)

SEGMENTATION_METRICS = ("dice", "iou", "presence_auc")
CLASSIFICATION_METRICS = ("balanced_accuracy", "auc", "accuracy")


class ConfigError(BreastdxError):
    """The training configuration file or an override breaks a rule."""

    code = "invalid_training_config"
    title = "Invalid training configuration"


class Task(StrEnum):
    SEGMENTATION = "segmentation"
    CLASSIFICATION = "classification"


class DatasetName(StrEnum):
    BUSI = "busi"
    BUSBRA = "busbra"
    BUSI_BUSBRA = "busi+busbra"  # data.root holds busi/ and busbra/; split per data set, merged
    CBIS_DDSM = "cbis_ddsm"
    CBIS_DDSM_JPEG = "cbis_ddsm_jpeg"
    CBIS_DDSM_COCO = "cbis_ddsm_coco"  # masses as COCO boxes on 800 x 800 JPEGs
    CBIS_DDSM_COCO_MIAS = "cbis_ddsm_coco+mias"  # root holds cbis-ddsm-mass/ and mammography/
    MIAS = "mias"
    IDC = "idc"


class Protocol(StrEnum):
    """``leakage_safe``: split first, augment the training side on the fly. ``paper``: the
    paper's order, augmented copies made before the split."""

    LEAKAGE_SAFE = "leakage_safe"
    PAPER = "paper"


class Device(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Scheduler(StrEnum):
    NONE = "none"
    COSINE = "cosine"
    PLATEAU = "plateau"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Fractions(_Section):
    """Share of the source images (or patients) in each split; they sum to 1."""

    train: float = Field(default=0.7, gt=0, lt=1)
    val: float = Field(default=0.15, gt=0, lt=1)
    test: float = Field(default=0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> Fractions:
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError("fractions train + val + test must sum to 1")
        return self


class DataConfig(_Section):
    dataset: DatasetName
    root: Path
    split_file: Path | None = None  # saved split: used where it exists, else made and saved there
    protocol: Protocol = Protocol.LEAKAGE_SAFE
    fractions: Fractions = Field(default_factory=Fractions)
    seed: int = 0
    paper_copies: int = Field(default=5, ge=1)  # paper protocol: copies per image (~5x)
    max_samples: int | None = Field(default=None, ge=1)  # seeded subset of whole patients/groups
    # Training side only: each image of a named data set (a sample's ``dataset``: busi, busbra,
    # cbis_ddsm, mini_mias, idc) is seen this many times an epoch, each time augmented anew,
    # e.g. {busi: 2} to weigh the smaller set (and its normal images) as much as the larger one.
    repeat: dict[str, int] = Field(default_factory=dict)
    # Training side only: a seeded subset of whole training groups (patients, near-duplicate
    # sets) holding about this fraction of the training images; validation and test unchanged.
    # For learning curves (how a model's validation figures grow with the training data).
    train_fraction: float | None = Field(default=None, gt=0.0, le=1.0)

    @field_validator("repeat")
    @classmethod
    def _positive_repeats(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {name: n for name, n in value.items() if n < 1}
        if bad:
            raise ValueError(f"data.repeat factors must be at least 1, got {bad}")
        return value


class ModelConfig(_Section):
    """Arguments of ``training.models.build_model``; None leaves the model's own default."""

    name: str = "unet"
    width: int | None = Field(default=None, ge=1)
    in_channels: int = Field(default=1, ge=1)
    num_classes: int | None = Field(default=None, ge=1)  # classification: K (default 2)
    input_size: int = Field(default=256, ge=8)  # square; preprocess.input_size follows it
    pretrained: Path | None = None
    options: dict[str, Any] = Field(default_factory=dict)  # e.g. {depth: 4} for unet


class LossConfig(_Section):
    """A loss from ``training.losses`` by name, e.g. ``tversky`` with ``{alpha: 0.3, beta: 0.7}``.

    ``malignancy_weight`` weighs the malignancy head of segmentation models (BCE).
    """

    name: str = ""  # empty: "dice" for segmentation, "ce" (cross-entropy) for classification
    params: dict[str, float | int | str | bool] = Field(default_factory=dict)
    malignancy_weight: float = Field(default=0.0, ge=0)  # BCE weight of the malignancy head
    lesion_malignancy_weight: float = Field(default=0.0, ge=0)  # per-pixel map inside lesions
    presence_weight: float = Field(default=0.0, ge=0)  # BCE of the lesion-presence head


class AugmentConfig(_Section):
    policy: str = "vanilla"
    mixup_alpha: float = Field(default=0.0, ge=0)
    cutmix_alpha: float = Field(default=0.0, ge=0)
    mix_prob: float = Field(default=0.0, ge=0, le=1)  # chance a training batch is mixed

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        from training.augment import AUGMENTATIONS

        if value not in AUGMENTATIONS.names():
            valid = ", ".join(sorted(AUGMENTATIONS.names()))
            raise ValueError(f"unknown augmentation policy {value!r}; valid policies: {valid}")
        return value


class OptimConfig(_Section):
    lr: float = Field(default=1e-3, ge=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    epochs: int = Field(default=50, ge=1)
    batch_size: int = Field(default=8, ge=1)
    patience: int = Field(default=10, ge=1)  # epochs without improvement before stopping
    scheduler: Scheduler = Scheduler.COSINE


class CropConfig(_Section):
    """Training on crops of the preprocessed image (``training.crops``); validation and test
    stay on whole images, as served. ``size`` must be a multiple of the model's stride."""

    size: int = Field(default=176, ge=16)  # square crop side, pixels of the model input
    per_image: int = Field(default=4, ge=1)  # crops drawn from each training image per epoch
    lesion_fraction: float = Field(default=0.5, ge=0, le=1)  # share centred near a lesion
    jitter: float = Field(default=0.35, ge=0, le=0.5)  # lesion offset from centre, x crop size
    min_tissue: float = Field(default=0.5, ge=0, le=1)  # background crops: share of non-zero px
    # hard negative mining: a share of the background crops centred on a false mark of an earlier
    # model (``breastdx hard-negatives`` writes the file), on films that have one
    hard_negatives: Path | None = None
    hard_negative_fraction: float = Field(default=0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _negatives_need_a_file(self) -> CropConfig:
        if self.hard_negative_fraction > 0 and self.hard_negatives is None:
            raise ValueError("crops.hard_negative_fraction needs crops.hard_negatives (a file)")
        return self


class TrainConfig(_Section):
    stage: Stage
    task: Task
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    preprocess: PreprocessConfig  # input_size and channels default to the model's
    monitor: str | None = None  # validation metric for early stopping; None: by task
    seed: int = 0
    device: Device = Device.AUTO
    # Mixed precision: float16 + gradient scaling on CUDA, bfloat16 autocast on CPU. None (the
    # default): on CUDA only; true: on CPU as well (this needs a CPU with bf16 arithmetic);
    # "auto": on CUDA, and on a CPU where a few timed training steps say it is faster there
    # (training.amp_choice; bf16 pays with AMX, not without).
    amp: bool | Literal["auto"] | None = None
    channels_last: bool = False  # NHWC memory format (faster convolutions on CPU with bf16)
    threads: int | None = Field(default=None, ge=1)  # torch CPU threads; None: torch's default
    cache: bool = True  # decode + preprocess each image once per run (augmentation stays per epoch)
    ema_decay: float | None = Field(default=None, gt=0, lt=1)  # weights' moving average, validated
    time_budget_min: float | None = Field(default=None, gt=0)  # stop before an epoch passes it
    # true: on a machine too slow for every epoch within time_budget_min, end the schedule on the
    # last epoch that fits at the pace measured (a cosine schedule anneals to its end there)
    # instead of stopping it mid-way; where every epoch fits, nothing changes
    time_budget_fit: bool = False
    crops: CropConfig | None = None  # train on crops (training.crops); None: whole images
    # Train only the parameters under these module names (e.g. [presence_head] on top of a
    # trained network given as model.pretrained); the rest stays frozen, its batch norms and
    # dropouts in eval mode. Empty: every parameter trains.
    train_only: list[str] = Field(default_factory=list)
    output_dir: Path = Path("runs/default")
    num_workers: int = Field(default=0, ge=0)
    progress: bool = True  # tqdm bar (also off when stderr is not a terminal)

    @model_validator(mode="before")
    @classmethod
    def _defaults_from_model(cls, data: Any) -> Any:
        """Fill ``preprocess.input_size/channels`` from the model and the loss name by task."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        model = data.get("model") if isinstance(data.get("model"), dict) else {}
        size = model.get("input_size", ModelConfig.model_fields["input_size"].default)
        channels = model.get("in_channels", ModelConfig.model_fields["in_channels"].default)
        pre = data.get("preprocess") or {}
        if isinstance(pre, dict) and isinstance(size, int) and isinstance(channels, int):
            data["preprocess"] = {"input_size": (size, size), "channels": channels, **pre}
        loss = data.get("loss") or {}
        if isinstance(loss, dict) and not loss.get("name"):
            task = data.get("task")
            data["loss"] = {**loss, "name": "ce" if task == "classification" else "dice"}
        return data

    @model_validator(mode="after")
    def _task_rules(self) -> TrainConfig:
        if self.time_budget_fit and self.time_budget_min is None:
            raise ValueError("time_budget_fit fits the schedule to time_budget_min: set both")
        valid = SEGMENTATION_METRICS if self.task is Task.SEGMENTATION else CLASSIFICATION_METRICS
        if self.monitor is not None and self.monitor not in valid:
            raise ValueError(f"monitor {self.monitor!r} is not a {self.task} metric; use {valid}")
        mixing = (
            self.augment.mix_prob > 0 and self.augment.mixup_alpha + self.augment.cutmix_alpha > 0
        )
        if mixing and self.task is not Task.CLASSIFICATION:
            raise ValueError("MixUp and CutMix apply to classification only")
        if self.task is Task.CLASSIFICATION and self.loss.name != "ce":
            raise ValueError("classification trains with loss 'ce' (takes MixUp/CutMix targets)")
        if self.task is Task.CLASSIFICATION and self.num_classes != 2:
            raise ValueError("classification is binary (malignant or not): model.num_classes = 2")
        members = self.model.options.get("members")  # an ensemble's: each must have the head
        presence = (
            all(bool((dict(m).get("options") or {}).get("presence")) for m in members)
            if members
            else bool(self.model.options.get("presence"))
        )
        if not presence and (self.monitor == "presence_auc" or self.loss.presence_weight > 0):
            raise ValueError(
                "monitor 'presence_auc' and loss.presence_weight need a presence head "
                "(model.options.presence: true)"
            )
        size = (self.model.input_size, self.model.input_size)
        if tuple(self.preprocess.input_size) != size:
            raise ValueError(f"preprocess.input_size must equal model.input_size {size}")
        if self.preprocess.channels != self.model.in_channels:
            raise ValueError("preprocess.channels must equal model.in_channels")
        return self

    @property
    def num_classes(self) -> int:
        """Classes of the classifier (2 unless ``model.num_classes`` says otherwise)."""
        return self.model.num_classes or 2

    @property
    def monitor_metric(self) -> str:
        """The early-stopping metric: ``monitor`` or Dice / balanced accuracy by task."""
        if self.monitor is not None:
            return self.monitor
        return "dice" if self.task is Task.SEGMENTATION else "balanced_accuracy"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-4"`` -> ``(["optim", "lr"], 0.0001)``; the value is read as a YAML scalar."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``a.b=value`` override set (intermediate sections created)."""
    result: dict[str, Any] = yaml.safe_load(yaml.safe_dump(data)) or {}
    for text in overrides:
        parts, value = parse_override(text)
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {text!r}: {where} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result


def _section_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = TrainConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            section = _section_at(tuple(item["loc"][:-1]))
            valid = ", ".join(section.model_fields) if section is not None else "?"
            lines.append(f"unknown key {where!r}; valid keys here: {valid}")
        else:
            lines.append(f"{where}: {item['msg']}")
    return "; ".join(lines)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Validate a plain dict; errors become one ``ConfigError`` naming every bad key."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid training config: {_describe(exc)}") from exc


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML file, apply ``a.b=value`` overrides, validate."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return config_from_dict(apply_overrides(data, list(overrides or [])))


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """The resolved configuration as plain YAML/JSON-ready data."""
    return config.model_dump(mode="json")


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write the resolved configuration as YAML; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")
    return path
