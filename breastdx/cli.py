"""The ``breastdx`` command: one entry point, one sub-command per job to be done.

Sub-commands are looked up lazily by module path so that ``breastdx inspect`` or ``breastdx
serve`` never import torch; only the training commands do. Each target is a module-level
``main(argv: list[str] | None = None) -> int`` that parses its own arguments.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

from breastdx.errors import BreastdxError


class Command(NamedTuple):
    target: str  # "package.module:function"
    help: str


COMMANDS: dict[str, Command] = {
    "inspect": Command("imaging.cli:main", "decode images and print their metadata as JSON lines"),
    "models": Command("models_registry.cli:main", "list, show, register, promote, verify models"),
    "augment-preview": Command(
        "training.cli_augment:main", "write a PNG grid of one image under every augmentation"
    ),
    "train": Command("training.cli_train:main", "train a model from a YAML config (+ overrides)"),
    "export": Command(
        "training.cli_export:main", "export a checkpoint to ONNX with parity check and model card"
    ),
    "warm-start": Command(
        "training.cli_warm_start:main", "rebuild a trainable state dict from an exported ONNX file"
    ),
    "ensemble": Command(
        "training.cli_ensemble:main",
        "average trained networks of one recipe into one model, scored as a finished run",
    ),
    "predict": Command(
        "service.cli_predict:main", "analyse images with a registered model; PNG masks and JSON"
    ),
    "evaluate": Command(
        "evaluation.cli:main", "score a model on labelled local data; report.json and .html"
    ),
    "quantize": Command(
        "evaluation.cli_quantize:main", "add an int8 file to a model, calibrated on training data"
    ),
    "lesion-score": Command(
        "evaluation.cli_lesion_score:main",
        "fit a segmentation model's detection score on training data, choose its threshold",
    ),
    "hard-negatives": Command(
        "evaluation.cli_hard_negatives:main",
        "write where a segmentation model marks falsely, as crop-training centres",
    ),
    "grid": Command("training.grid.cli:main", "run the paper's experiment grid and its reports"),
    "serve": Command(
        "service.cli:serve_main", "run the HTTP API (in process, or queued with Redis)"
    ),
    "worker": Command("service.cli_worker:main", "run a queue worker for the stage queues"),
    "api-keys": Command("service.cli_keys:main", "create, list and revoke API keys"),
    "dicom-listener": Command(
        "service.cli_dicom:listener_main", "receive DICOM images (C-STORE), send SEG/SR/SC back"
    ),
    "dicom-deadletter": Command(
        "service.cli_dicom:deadletter_main", "list or replay undelivered DICOM results"
    ),
    "pacs": Command("service.cli_pacs:main", "pull a study over DICOMweb, analyse, store back"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: breastdx COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {cmd.help}" for name, cmd in sorted(COMMANDS.items())]
    lines += ["", "Run 'breastdx COMMAND --help' for a command's options."]
    return "\n".join(lines)


def resolve(name: str) -> Callable[[list[str] | None], int]:
    """The ``main`` of sub-command ``name``; an unknown name lists the valid ones."""
    if name not in COMMANDS:
        valid = ", ".join(sorted(COMMANDS))
        raise KeyError(f"unknown command {name!r}; valid commands: {valid}")
    module_name, _, attr = COMMANDS[name].target.partition(":")
    module = importlib.import_module(module_name)
    func: Callable[[list[str] | None], int] = getattr(module, attr)
    return func


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        from breastdx import __version__

        print(f"breastdx {__version__}")
        return 0
    try:
        func = resolve(args[0])
    except KeyError as exc:
        print(f"breastdx: {exc.args[0]}", file=sys.stderr)
        return 2
    try:
        return int(func(args[1:]) or 0)
    except BreastdxError as exc:  # one the command did not answer itself (e.g. bad settings)
        print(f"breastdx {args[0]}: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
