"""An ensemble run: trained networks of one recipe put side by side and scored as one model.

    breastdx ensemble --config training/configs/ship/ultrasound.yaml \\
        --member runs/us-seed1/best.pt \\
        --member models_registry/store/ultrasound-unet/7/model.onnx --out runs/us-ensemble

A member is a trainer checkpoint (``best.pt``: its weights and the config it trained with) or a
registered ONNX file with its ``card.json`` beside it (the card's training config names the
network; the weights are rebuilt by ``training.onnx_weights.rebuild_from_onnx`` and checked
against the file). A member that is itself an ensemble (a shipped ensemble's file, say) gives
its networks, each a member of its own: a new run then joins them with the weight each of them
has (1/N of N networks), not half the vote, and the members' checkpoints need not be kept.
Every member must see the same input as the ensemble's config: the same stage and task, input
size, channels and preprocessing. The ensemble (``training.models.ensemble``)
averages the members' logits; ``training.trainer.score_fixed`` then writes the run folder a
training run leaves (``best.pt``, ``metrics.json`` with the temperature fitted on validation),
so ``breastdx export`` gives it an operating point, a parity gate and a card like any model.
The card's training time is the members' summed, its hardware theirs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from breastdx.errors import BreastdxError
from training.config import Task, TrainConfig, config_from_dict, config_to_dict

logger = logging.getLogger(__name__)

CARD_FILE = "card.json"


class EnsembleError(BreastdxError):
    """A member cannot be read or does not fit the ensemble's recipe."""

    code = "ensemble_error"
    title = "Ensemble members do not fit together"


@dataclass(frozen=True)
class Member:
    """One trained network: its weights, the config it trained with and where it came from."""

    source: str
    config: TrainConfig
    state: dict[str, torch.Tensor]
    hardware: str
    duration_s: float
    git_commit: str | None

    def describe(self) -> dict[str, Any]:
        model = self.config.model
        return {
            "source": self.source,
            "network": f"{model.name} width={model.width} {dict(model.options)}",
            "seed": self.config.seed,
            "hardware": self.hardware,
            "duration_s": round(self.duration_s, 3),
            "git_commit": self.git_commit,
        }


def _from_checkpoint(path: Path) -> Member:
    from training.export import load_trained
    from training.export_card import run_duration
    from training.parity import ExportError

    try:
        run = load_trained(path)
    except ExportError as exc:
        raise EnsembleError(f"member {path}: {exc.message}") from exc
    return Member(
        source=str(path),
        config=run.config,
        state=run.model.state_dict(),
        hardware=str(run.state.get("hardware") or "not recorded"),
        duration_s=run_duration(run),
        git_commit=run.state.get("git_commit"),
    )


def _from_onnx(path: Path, base: TrainConfig, *, n: int, seed: int, tolerance: float) -> Member:
    from training.onnx_weights import rebuild_from_onnx
    from training.parity import ExportError

    # a store version's card.json, or the card draft ``breastdx export`` writes beside its file
    drafts = [path.parent / CARD_FILE, path.with_suffix(".card.json")]
    card_path = next((p for p in drafts if p.is_file()), drafts[0])
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        training = card["training"]
        config = config_from_dict(training["config"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EnsembleError(
            f"member {path}: an ONNX member needs its card beside it ({CARD_FILE} in the store, "
            f"{path.stem}.card.json from breastdx export): its training config names the "
            f"network ({exc})"
        ) from exc
    except BreastdxError as exc:
        raise EnsembleError(f"member {path}: its card's training config: {exc.message}") from exc
    # the network as the card says; the data (where it lies on this machine) as the ensemble's
    config = config.model_copy(update={"data": base.data, "crops": base.crops})
    try:
        model, _, _ = rebuild_from_onnx(config, path, n=n, seed=seed, tolerance=tolerance)
    except ExportError as exc:
        raise EnsembleError(f"member {path}: {exc.message}") from exc
    return Member(
        source=f"{card.get('name')}@{card.get('version')} ({path})",
        config=config,
        state=model.state_dict(),
        hardware=str(training.get("hardware") or "not recorded"),
        duration_s=float(training.get("duration_s") or 0.0),
        git_commit=training.get("git_commit"),
    )


def load_member(
    path: Path, base: TrainConfig, *, n: int = 48, seed: int = 0, tolerance: float = 1e-3
) -> Member:
    """A member from a trainer checkpoint or a registered ONNX file (see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise EnsembleError(f"member {path} is not a file")
    if path.suffix == ".onnx":
        return _from_onnx(path, base, n=n, seed=seed, tolerance=tolerance)
    return _from_checkpoint(path)


def flatten(member: Member) -> list[Member]:
    """An ensemble member as its networks (see the module doc); any other as itself.

    Each network keeps its weights (``members.<i>.`` in the ensemble's state dict) and the
    ensemble's config with its own ``name``, ``width`` and ``options``; the ensemble's recorded
    training time is shared equally, since its card does not break it down.
    """
    from training.models.ensemble import is_ensemble

    model = member.config.model
    if not is_ensemble(model.name):
        return [member]
    records = list(model.options.get("members") or ())
    networks = []
    for index, record in enumerate(records):
        prefix = f"members.{index}."
        state = {k.removeprefix(prefix): v for k, v in member.state.items() if k.startswith(prefix)}
        own = model.model_copy(
            update={
                "name": str(record["name"]),
                "width": record.get("width"),
                "options": dict(record.get("options") or {}),
            }
        )
        networks.append(
            Member(
                source=f"{member.source} network {index + 1} of {len(records)}",
                config=member.config.model_copy(update={"model": own}),
                state=state,
                hardware=member.hardware,
                duration_s=member.duration_s / len(records),
                git_commit=member.git_commit,
            )
        )
    return networks


def _check_fits(member: Member, base: TrainConfig) -> None:
    """The member must see what the ensemble feeds it and give what the ensemble reports."""
    theirs, ours = member.config, base
    pairs = {
        "stage": (theirs.stage, ours.stage),
        "task": (theirs.task, ours.task),
        "model.input_size": (theirs.model.input_size, ours.model.input_size),
        "model.in_channels": (theirs.model.in_channels, ours.model.in_channels),
        "preprocess": (theirs.preprocess, ours.preprocess),
    }
    for key, (a, b) in pairs.items():
        if a != b:
            raise EnsembleError(
                f"member {member.source} has {key} {a!r}, the ensemble's config {b!r}: every "
                "member must see the same preprocessed image"
            )


def ensemble_config(base: TrainConfig, members: list[Member], output_dir: Path) -> TrainConfig:
    """``base`` with its model replaced by the members' ensemble (validated as any config)."""
    data = config_to_dict(base)
    name = "ensemble" if base.task is Task.SEGMENTATION else "classifier_ensemble"
    data["model"] = {
        "name": name,
        "in_channels": base.model.in_channels,
        "num_classes": base.model.num_classes,
        "input_size": base.model.input_size,
        "width": None,
        "pretrained": None,
        "options": {"members": [_record(m) for m in members]},
    }
    data["output_dir"] = str(output_dir)
    data["ema_decay"] = None  # nothing trains
    if not all(m.config.model.options.get("presence") for m in members):
        data["loss"]["presence_weight"] = 0.0  # the ensemble gives no presence output
        if data.get("monitor") == "presence_auc":
            data["monitor"] = None
    return config_from_dict(data)


def _record(member: Member) -> dict[str, Any]:
    model = member.config.model
    return {"name": model.name, "width": model.width, "options": dict(model.options)}


def build_ensemble(
    base: TrainConfig,
    paths: list[Path],
    output_dir: Path,
    *,
    n: int = 48,
    seed: int = 0,
    tolerance: float = 1e-3,
) -> dict[str, Any]:
    """Load the members, check they fit ``base``, score the ensemble into ``output_dir``.

    Returns a summary: the members, the validation figures and the run folder's ``best.pt``.
    """
    from training.trainer import build_model, score_fixed

    if len(paths) < 2:
        raise EnsembleError("an ensemble needs at least two members")
    for path in paths:  # scoring clears the run files of --out: a member's run must not be it
        if Path(path).resolve().parent == Path(output_dir).resolve():
            raise EnsembleError(
                f"--out {output_dir} holds member {path}: scoring would replace that run's "
                "best.pt; name another folder"
            )
    loaded = [load_member(p, base, n=n, seed=seed, tolerance=tolerance) for p in paths]
    members = [network for member in loaded for network in flatten(member)]
    for member in members:
        _check_fits(member, base)
    config = ensemble_config(base, members, output_dir)
    model = build_model(config)
    for index, member in enumerate(members):  # strict: the same network, every tensor
        try:
            model.get_submodule(f"members.{index}").load_state_dict(member.state)
        except RuntimeError as exc:  # torch's report of missing or misshapen tensors
            raise EnsembleError(f"member {member.source}: its weights do not fit: {exc}") from exc
    described = [m.describe() for m in members]
    hardware = sorted({m.hardware for m in members})
    extra = {
        "hardware": "; ".join(hardware),
        "duration_s": sum(m.duration_s for m in members),
        "members": described,
    }
    logger.info("ensemble of %d members -> %s", len(members), output_dir)
    report = score_fixed(config, model, extra)
    return {
        "out": str(output_dir),
        "checkpoint": str(Path(output_dir) / "best.pt"),
        "members": described,
        "val": report.get("val"),
        "temperature": report.get("temperature"),
    }
