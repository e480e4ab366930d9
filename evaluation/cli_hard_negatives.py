"""``breastdx hard-negatives``: where a segmentation model marks falsely, as crop-training centres.

    breastdx hard-negatives --stage mammography DATA [DATA...] --split FILE --out FILE
        [--model NAME@VERSION] [--store DIR] [--subset train] [--max-per-image 8]

The model runs, as the service runs it, over the split's ``--subset`` images (default ``train``:
the crops a training run draws come from there); every region above the card's pixel threshold
and minimum area that hits no true lesion (the FROC's hit rule, ``imaging.lesion_match``) is a
false mark. Its centre in model-input pixels (the card's preprocessing: breast crop, canonical
orientation, resize) is written to ``--out`` with its peak probability, the most confident first,
at most ``--max-per-image`` per image. A crop training run centres a share of its background
crops on them (``crops.hard_negatives`` and ``crops.hard_negative_fraction``,
``training.crops``): hard negative mining, so the network sees the tissue it mistook for a mass.

Exit 0: written; 1: the model or store refused; 2: bad usage or data.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from evaluation.cli import exit_code
from evaluation.regions import add_model_and_data, located_cases, scored_images, segmentation_model
from imaging.lesion_match import HIT_RULE

PROG = "breastdx hard-negatives"
FORMAT = "breastdx.hard-negatives/1"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    add_model_and_data(parser)
    parser.add_argument("--subset", default="train", help="the split's part to mine (train)")
    parser.add_argument("--max-per-image", type=int, default=8, help="false marks kept (8)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING"])
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.subset == "test":
        print(f"{PROG}: the test split is never trained on", file=sys.stderr)
        return 2
    if args.max_per_image < 1:
        print(f"{PROG}: --max-per-image must be >= 1", file=sys.stderr)
        return 2
    registry, card = segmentation_model(args)
    if card is None:
        print(
            f"{PROG}: model {args.model} is not a {args.stage} segmentation model", file=sys.stderr
        )
        return 2
    images = scored_images(
        located_cases(args, args.subset), card, registry, args.threads, "mine", PROG
    )
    films: dict[str, list[list[float]]] = {}
    n_regions = n_false = 0
    for image in images:
        n_regions += len(image.boxes)
        false = [i for i, hit in enumerate(image.labels()) if not hit]
        n_false += len(false)
        false.sort(key=lambda i: -float(image.peaks[i]))
        films[f"{image.dataset}:{image.id}"] = [
            [round(float(image.centres[i, 0]), 1), round(float(image.centres[i, 1]), 1),
             round(float(image.peaks[i]), 4)]
            for i in false[: args.max_per_image]
        ]  # fmt: skip
    document: dict[str, Any] = {
        "format": FORMAT,
        "model": card.ref,
        "model_sha256": card.onnx.sha256,
        "input_size": list(card.input.size),
        "mask_threshold": card.thresholds.mask,
        "split": args.split.name,
        "subset": args.subset,
        "hit_rule": HIT_RULE,
        "columns": ["x", "y", "peak"],
        "n_images": len(images),
        "n_regions": n_regions,
        "n_false_regions": n_false,
        "films": films,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document) + "\n", encoding="utf-8")
    kept = sum(len(v) for v in films.values())
    print(
        f"{PROG}: {kept} false marks of {card.ref} (of {n_false} false among {n_regions} "
        f"regions on {len(images)} images) -> {args.out}",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Mine and write; exit 0, 1 (the model or store refused) or 2 (usage or data)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    return exit_code(PROG, lambda: _run(args))


if __name__ == "__main__":
    raise SystemExit(main())
