"""``breastdx quantize``: add an int8 file to a registered model, calibrated on training images.

    breastdx quantize --stage histopathology DATA [DATA...] --split FILE [--subset train]
        [--model NAME@VERSION] [--store DIR] [--images 256] [--method minmax]
        [--keep-float FIRST_LAST|NONE] [--register-store DIR] [--alias staging]

Images of the split's ``--subset`` (default ``train``: test images never fit a scale) are read
with the data-set readers of ``breastdx evaluate``, a seeded sample of ``--images`` of them is
decoded and preprocessed exactly as serving does (the card's own preprocessing), and
``models_registry.quantize`` writes the model's int8 QDQ file from them. The file is registered
as a NEW version of the model (the same ``model.onnx`` and card, plus ``onnx.int8``); no int8
runtime serves it yet. Then measure it and let the card allow it:

    breastdx evaluate --stage STAGE DATA... --split FILE --subset test --model NAME@VERSION \\
        --runtime openvino-int8 --out DIR --register [--alias production]

which refuses it where a Dice or AUC figure falls more than 0.01 below float32.

Exit 0: registered; 1: the model, the store or the quantiser refused; 2: bad usage or data.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

from evaluation import formats
from evaluation.card import onnx_export_of, register_again
from evaluation.cases import Case
from evaluation.cli import SplitUseError, _split_part, exit_code, restrict
from models_registry.card import Int8Export, ModelCard, Stage
from models_registry.registry import Registry

PROG = "breastdx quantize"
logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--stage", required=True, choices=[s.value for s in Stage])
    parser.add_argument("data", nargs="+", type=Path, metavar="DATA", help="data set folders")
    parser.add_argument("--model", help="NAME, NAME@ALIAS or NAME@VERSION (default: the stage's)")
    parser.add_argument("--store", action="append", help="model store (repeatable)")
    parser.add_argument("--format", choices=sorted(formats.FORMATS), help="data-set format")
    parser.add_argument("--split", type=Path, required=True, help="the model's split file")
    parser.add_argument("--subset", default="train", help="the split's part to calibrate on")
    parser.add_argument("--images", type=int, default=256, help="calibration images (256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration sample")
    parser.add_argument(
        "--method", choices=["minmax", "percentile", "entropy"], default="minmax",
        help="how activation ranges are fitted (minmax)",
    )  # fmt: skip
    parser.add_argument(
        "--keep-float", choices=["none", "first_last"], default="none",
        help="first_last: keep the first and last layers in float32",
    )  # fmt: skip
    parser.add_argument("--register-store", type=Path, help="store to register in (the model's)")
    parser.add_argument("--alias", help="alias for the new version, e.g. staging")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING"])
    return parser


def calibration_cases(args: argparse.Namespace) -> list[Case]:
    """A seeded sample of ``--images`` cases of the split's ``--subset``, over every DATA."""
    part = _split_part(args.split, args.subset)
    cases: list[Case] = []
    for root in args.data:
        fmt = formats.get_format(args.format) if args.format else formats.detect_format(root)
        found = formats.read_cases(root, fmt)
        cases += restrict(found, part, found[0].dataset, root)[0]
    if not cases:
        raise SplitUseError(f"split {args.split} names no case of this data in {args.subset!r}")
    rng = np.random.default_rng(args.seed)
    chosen = rng.choice(len(cases), size=min(args.images, len(cases)), replace=False)
    return [cases[i] for i in sorted(chosen)]


def calibration_inputs(card: ModelCard, cases: list[Case]) -> np.ndarray:
    """``(N, C, H, W)``: each case decoded and preprocessed as the service does."""
    from imaging.decode import decode
    from imaging.preprocess import preprocess_decoded

    config = card.preprocess_config()
    return np.stack([preprocess_decoded(decode(c.image_path), config)[0] for c in cases])


def _run(args: argparse.Namespace) -> int:
    from models_registry.quantize import first_and_last_nodes, quantize_int8
    from service.inference.pipeline import default_model_ref

    registry = Registry(args.store) if args.store else Registry.default()
    card = registry.card(args.model or default_model_ref(Stage(args.stage), registry))
    if card.stage.value != args.stage:
        print(
            f"{PROG}: model {card.ref} serves {card.stage.value}, not {args.stage}", file=sys.stderr
        )
        return 2
    loaded = registry.load(card.ref)
    cases = calibration_cases(args)
    inputs = calibration_inputs(card, cases)
    datasets = sorted({c.dataset for c in cases})
    described = (
        f"{len(cases)} images of the {args.subset!r} part of {args.split.name} "
        f"({', '.join(datasets)}; seed {args.seed}), preprocessed as served"
    )
    exclude = first_and_last_nodes(loaded.onnx_path) if args.keep_float == "first_last" else []
    with tempfile.TemporaryDirectory(prefix="breastdx-quantize-") as folder:
        tmp = Path(folder)
        result = quantize_int8(
            loaded.onnx_path,
            tmp / "model.int8.onnx",
            card.input.name,
            inputs,
            described_as=described,
            method=args.method,
            exclude=exclude,
        )
        body = card.model_dump(mode="json", exclude={"name", "version", "registered_at", "onnx"})
        body["reduced_precision"] = [  # the int8 figures belong to the old int8 file, if any
            v for v in body["reduced_precision"] if not v["runtime"].endswith("int8")
        ]
        onnx = onnx_export_of(card, Int8Export(quantization=result.quantization))
        new = register_again(
            registry,
            card,
            {**body, "onnx": onnx.model_dump(mode="json")},
            target=Registry([args.register_store]) if args.register_store else None,
            alias=args.alias,
            int8_path=result.path,
        )
    size = new.onnx.int8.size_bytes / 1e6 if new.onnx.int8 else 0.0
    print(
        f"{PROG}: registered {new.ref} with model.int8.onnx ({size:.1f} MB; {described}); "
        f"measure it: breastdx evaluate ... --model {new.ref} --runtime openvino-int8 --register",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Quantise and register; exit 0, 1 (the model, store or quantiser refused) or 2 (usage)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error("--images must be >= 1")
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    return exit_code(PROG, lambda: _run(args))


if __name__ == "__main__":
    raise SystemExit(main())
