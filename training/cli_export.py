"""``breastdx export``: a trained checkpoint -> ONNX with parity checked, a card, and registration.

    breastdx export --checkpoint runs/x/best.pt --out model.onnx \\
        [--parity-images FILE... | --parity-split test --parity-n 32] [--fp16 | --weights-fp16] \\
        [--register --name NAME [--alias staging] [--store DIR]]

Prints a JSON summary (files, opset, parity figures, registered version) on stdout. A failed
parity check, a run folder that lacks what the card needs, or a registry refusal exits 1 with the
error's code and message on stderr; bad usage exits 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from breastdx.errors import BreastdxError

if TYPE_CHECKING:
    from training.export import ExportResult

PROG = "breastdx export"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="best.pt of a run")
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    parity = parser.add_mutually_exclusive_group()
    parity.add_argument("--parity-images", type=Path, nargs="+", metavar="FILE")
    parity.add_argument("--parity-split", default="test", help="side of the run's split.json")
    parser.add_argument("--parity-n", type=int, default=32, help="images from --parity-split")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument(
        "--fp16", action="store_true", help="also write and check <out>.fp16.onnx"
    )
    precision.add_argument(
        "--weights-fp16",
        action="store_true",
        help="write --out with float16 weight storage and float32 compute (about half the size), "
        "checked against torch within 2e-3 probability and 99.5%% mask pixels",
    )
    parser.add_argument("--opset", type=int, default=17, choices=[17, 18])
    parser.add_argument("--min-lesion-area-px", type=int, default=16)
    parser.add_argument(
        "--operating-point-split",
        metavar="SPLIT",
        help="segmentation: choose the mask, lesion-presence and malignancy thresholds and the "
        "lesion temperature with the exported file on this split of the run (e.g. val)",
    )
    parser.add_argument(
        "--max-false-lesion-rate",
        type=float,
        default=0.10,
        help="the largest false-lesion rate on lesion-free images the operating point may have",
    )
    parser.add_argument(
        "--max-fp-per-image",
        type=float,
        metavar="RATE",
        help="detection operating point (mammography): the mask and presence thresholds that hit "
        "the most true lesions with at most RATE false marks per image (e.g. 1)",
    )
    parser.add_argument(
        "--image-malignancy",
        choices=["head", "lesion_weighted"],
        default="head",
        help="segmentation with a lesion malignancy output: form each image's malignancy from "
        "the image head (default) or from its lesions (the lesion malignancy map weighted by the "
        "lesion probabilities); the card records it and the operating point thresholds it",
    )
    parser.add_argument("--register", action="store_true", help="register in the model registry")
    parser.add_argument("--name", help="model name to register under")
    parser.add_argument("--alias", help="alias to point at the new version, e.g. staging")
    parser.add_argument(
        "--store", action="append", help="registry store (repeatable; default: the service's)"
    )
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING"])
    return parser


def _check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.parity_n < 1:
        parser.error("--parity-n must be >= 1")
    if args.min_lesion_area_px < 0:
        parser.error("--min-lesion-area-px must be >= 0")
    if not 0.0 <= args.max_false_lesion_rate <= 1.0:
        parser.error("--max-false-lesion-rate must lie in [0, 1]")
    if args.max_fp_per_image is not None and not args.max_fp_per_image >= 0.0:
        parser.error("--max-fp-per-image must be >= 0")
    if args.register and not args.name:
        parser.error("--register needs --name")
    if not args.register and (args.name or args.alias or args.store):
        parser.error("--name, --alias and --store go with --register")
    if args.out.suffix != ".onnx":
        parser.error("--out must name a .onnx file")


def _register(args: argparse.Namespace, result: ExportResult) -> dict[str, object]:
    from models_registry.registry import Registry

    registry = Registry(args.store) if args.store else Registry.default()
    card = registry.register(
        args.name, result.onnx_path, result.draft, fp16_path=result.fp16_path, alias=args.alias
    )
    return {"model": card.ref, "sha256": card.onnx.sha256, "alias": args.alias}


def main(argv: list[str] | None = None) -> int:
    """Export, check parity, draft the card, optionally register; exit 0, 1 or 2."""
    parser = _parser()
    args = parser.parse_args(argv)
    _check_usage(parser, args)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    from models_registry.card import Thresholds
    from training.export import export_checkpoint, result_summary, split_images

    try:
        images = args.parity_images or split_images(
            args.checkpoint.parent, args.parity_split, args.parity_n
        )
        result = export_checkpoint(
            args.checkpoint,
            args.out,
            parity_images=images,
            fp16=args.fp16,
            weights_fp16=args.weights_fp16,
            opset=args.opset,
            thresholds=Thresholds(min_lesion_area_px=args.min_lesion_area_px),
            name=args.name,
            operating_point_split=args.operating_point_split,
            max_false_lesion_rate=args.max_false_lesion_rate,
            max_fp_per_image=args.max_fp_per_image,
            image_malignancy=args.image_malignancy,
        )
        summary = result_summary(result)
        summary["registered"] = _register(args, result) if args.register else None
    except BreastdxError as exc:
        print(f"{PROG}: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
