"""Ensembles: several trained networks of one task run side by side, their outputs averaged.

``ensemble`` (segmentation members, e.g. two U-Nets) and ``classifier_ensemble`` (classifiers)
take one option, ``members``: a list of ``{name, width, options}`` records of registered models.
Every member gets the ensemble's ``in_channels``, ``num_classes`` and ``input_size`` (they see the
same preprocessed image). The ensemble gives the outputs every member gives (a head only some
members have, e.g. a presence head, is left out); each is the mean of the members' LOGITS (not
of probabilities): a mean of logits keeps the output contract (the service applies the sigmoid
or softmax and the card's temperature as for one network), and the temperature and thresholds
are fitted to the ensemble on validation as for any model.

The members' weights live under ``members.<i>.`` in the state dict, so a checkpoint of an
ensemble exports, passes the parity gate and is evaluated like any other model
(``training.ensemble`` builds one from trained members).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from training.models.heads import MODELS, BreastdxModel, ModelConfigError, ModelSpec, ModelTask

MEMBER_KEYS = frozenset({"name", "width", "options"})


def member_record(spec: ModelSpec) -> dict[str, Any]:
    """The ``members`` entry of a built network's spec (the ensemble supplies the rest)."""
    return {"name": spec.name, "width": spec.width, "options": dict(spec.options)}


def _member_class(ensemble: str, record: Any, index: int) -> type[BreastdxModel]:
    if not isinstance(record, Mapping) or "name" not in record:
        raise ModelConfigError(
            f"{ensemble}: member {index} must be a mapping with a 'name' (and optional 'width', "
            f"'options'), got {record!r}"
        )
    unknown = sorted(set(record) - MEMBER_KEYS)
    if unknown:
        raise ModelConfigError(
            f"{ensemble}: member {index} has unknown key(s) {unknown}; a member takes "
            "name, width and options (the ensemble sets in_channels, num_classes and input_size)"
        )
    cls = MODELS.get(str(record["name"]))
    if issubclass(cls, _Ensemble):
        raise ModelConfigError(f"{ensemble}: member {index} is itself an ensemble")
    return cls


def is_ensemble(name: str) -> bool:
    """True when the registered network ``name`` is an ensemble of others."""
    return issubclass(MODELS.get(name), _Ensemble)


class _Ensemble(BreastdxModel):
    """The members' outputs averaged (logits); see the module docstring."""

    option_defaults: ClassVar[Mapping[str, Any]] = {"members": ()}

    @classmethod
    def check_options(cls, name: str, options: Mapping[str, Any]) -> None:
        members = options["members"]
        if not isinstance(members, list | tuple) or len(members) < 2:
            raise ModelConfigError(f"{name}: members must list at least two networks")
        for index, record in enumerate(members):
            member = _member_class(name, record, index)
            if member.task is not cls.task:
                raise ModelConfigError(
                    f"{name}: member {index} ({record['name']}) is a {member.task} network; "
                    f"this ensemble averages {cls.task} networks"
                )

    @classmethod
    def size_multiple(cls, options: Mapping[str, Any]) -> int:
        multiple = 1
        for index, record in enumerate(options["members"]):
            member = _member_class("ensemble", record, index)
            merged = {**member.option_defaults, **dict(record.get("options") or {})}
            multiple = math.lcm(multiple, max(member.size_multiple(merged), 1))
        return multiple

    def __init__(self, config: ModelSpec) -> None:
        super().__init__(config)
        built: list[BreastdxModel] = []
        for record in self.config.options["members"]:
            spec = ModelSpec(
                str(record["name"]),
                self.config.in_channels,
                self.config.num_classes,
                record.get("width"),
                self.config.input_size,
                dict(record.get("options") or {}),
            )
            built.append(MODELS.get(spec.name)(spec))
        # the outputs every member gives, in the first member's order (an optional head that
        # only some members have, e.g. a presence head, is left out)
        common = set.intersection(*(set(m.output_names) for m in built))
        self._outputs = tuple(n for n in built[0].output_names if n in common)
        self.members = nn.ModuleList(built)
        # the resolved records (defaults filled), so checkpoints and cards say what ran
        resolved = tuple(member_record(m.config) for m in built)
        self.config = ModelSpec(
            config.name,
            self.config.in_channels,
            self.config.num_classes,
            None,
            self.config.input_size,
            {**self.config.options, "members": resolved},
        )

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._outputs

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = [member(x) for member in self.members]
        return {
            name: torch.stack([out[name] for out in outputs]).mean(dim=0)
            for name in self.output_names
        }


@MODELS.register("ensemble")
class SegmentationEnsemble(_Ensemble):
    """Segmentation networks (e.g. U-Nets of two training runs), outputs averaged."""

    task = ModelTask.SEGMENTATION
    default_num_classes = 1


@MODELS.register("classifier_ensemble")
class ClassifierEnsemble(_Ensemble):
    """Classification networks (e.g. ResNets of two training runs), class logits averaged."""

    task = ModelTask.CLASSIFICATION
    default_num_classes = 2
