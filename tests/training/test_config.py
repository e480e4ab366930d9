"""Training configuration: YAML, ``a.b=value`` overrides, unknown keys, saved resolved config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training.config import (
    ConfigError,
    Protocol,
    Task,
    TrainConfig,
    apply_overrides,
    load_config,
    parse_override,
    save_config,
)

REPO = Path(__file__).resolve().parents[2]
BASE = {
    "stage": "ultrasound",
    "task": "segmentation",
    "data": {"dataset": "busi", "root": "data/busi"},
    "model": {"name": "unet", "input_size": 64, "in_channels": 1},
}


def _write(tmp_path: Path, data: dict[str, object]) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_load_with_defaults_and_derived_preprocessing(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, BASE))
    assert config.task is Task.SEGMENTATION and config.data.protocol is Protocol.LEAKAGE_SAFE
    assert config.preprocess.input_size == (64, 64) and config.preprocess.channels == 1
    assert config.loss.name == "dice" and config.monitor_metric == "dice"


def test_overrides_are_yaml_scalars_and_create_sections(tmp_path: Path) -> None:
    overrides = [
        "optim.lr=1e-4",
        "optim.epochs=3",
        "amp=false",
        "data.protocol=paper",
        "data.fractions.train=0.8",
        "data.fractions.val=0.1",
        "data.fractions.test=0.1",
        "loss.name=tversky",
        "loss.params.beta=0.7",
        "augment.policy=all",
        "output_dir=runs/x",
    ]
    config = load_config(_write(tmp_path, BASE), overrides)
    assert config.optim.lr == pytest.approx(1e-4) and config.optim.epochs == 3
    assert config.amp is False and config.data.protocol is Protocol.PAPER
    assert config.data.fractions.train == pytest.approx(0.8)
    assert config.loss.params == {"beta": 0.7} and config.augment.policy == "all"
    assert config.output_dir == Path("runs/x")


def test_parse_override() -> None:
    assert parse_override("a.b.c=[1, 2]") == (["a", "b", "c"], [1, 2])
    assert parse_override("seed=7") == (["seed"], 7)
    for bad in ("seed", "=3", "a..b=1"):
        with pytest.raises(ConfigError, match=r"section\.key=value"):
            parse_override(bad)


def test_override_into_a_value_is_an_error() -> None:
    with pytest.raises(ConfigError, match="seed is a value"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


@pytest.mark.parametrize(
    ("override", "where", "valid"),
    [
        ("optim.learning_rate=0.1", "optim.learning_rate", "lr, weight_decay"),
        ("colour=red", "colour", "stage, task, data"),
        ("data.fractions.holdout=0.1", "data.fractions.holdout", "train, val, test"),
    ],
)
def test_unknown_keys_name_the_valid_ones(
    tmp_path: Path, override: str, where: str, valid: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, BASE), [override])
    assert f"unknown key '{where}'" in info.value.message and valid in info.value.message


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("augment.policy=sharpen", "valid policies: all, filter"),
        ("data.dataset=mnist", "data.dataset"),
        ("monitor=auc", "not a segmentation metric"),
        ("augment.cutmix_alpha=1.0", "classification only"),
        ("data.fractions.train=0.9", "sum to 1"),
        ("preprocess.input_size=[32, 32]", "must equal model.input_size"),
    ],
)
def test_rules_are_enforced(tmp_path: Path, override: str, message: str) -> None:
    overrides = [override] + (["augment.mix_prob=1"] if "cutmix" in override else [])
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, BASE), overrides)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_saved_config_round_trips(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, BASE), ["loss.params.alpha=0.3"])
    saved = save_config(config, tmp_path / "run" / "config.yaml")
    assert load_config(saved) == config
    with pytest.raises(Exception, match="frozen"):
        config.seed = 3  # type: ignore[misc]


CONFIGS = REPO / "training/configs"


@pytest.mark.parametrize(
    "name", sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml"))
)
def test_example_configs_are_valid(name: str) -> None:
    """Every config, the shipped models' (``ship/``) included."""
    config = load_config(CONFIGS / name)
    assert isinstance(config, TrainConfig)
    assert (config.task is Task.CLASSIFICATION) == (config.stage.value == "histopathology")
