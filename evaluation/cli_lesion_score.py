"""``breastdx lesion-score``: fit a segmentation model's detection score on its training images.

    breastdx lesion-score --stage mammography DATA [DATA...] --split FILE [--model NAME@VERSION]
        [--store DIR] [--fit-subset train] [--choose-subset val] [--max-fp-per-image 1.0]
        [--max-false-lesion-rate 0.4] [--l2 30] [--out DIR] [--register-store DIR]
        [--alias staging]

The model runs, as the service runs it, over the split's ``--fit-subset`` images (default
``train``); every region above the card's pixel threshold and minimum area is a sample: true
where it hits a true lesion under the FROC's hit rule (``imaging.lesion_match``). A logistic
model of the region's peak and mean probability and area (``imaging.lesion_score``) is fitted
on them. On ``--choose-subset`` (default ``val``; never the test split) the presence threshold
on the new score is chosen as ``breastdx export`` chooses a detection operating point: the most
true lesions hit with at most ``--max-fp-per-image`` false marks per image and at most
``--max-false-lesion-rate`` of the lesion-free images marked (ties: fewer false marks). The same
choice on the peak probability is reported beside it. A NEW version of the model is registered
(the same ONNX files) whose card carries the score (``calibration.lesion_score``) and that
threshold; the old card's evaluated figures are left off it (they were measured with the
peak): measure it with ``breastdx evaluate --register``. ``--out DIR`` gets ``lesion-score.json``
(coefficients, both choices, the FROC of both scores on ``--choose-subset``).

Exit 0: registered; 1: the model or store refused; 2: bad usage or data.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.card import onnx_export_of, register_again
from evaluation.cli import exit_code
from evaluation.regions import (
    ScoredImage,
    add_model_and_data,
    located_cases,
    scored_images,
    segmentation_model,
)
from imaging.lesion_match import match_marks
from imaging.lesion_score import FEATURES, LesionScorer, fit_scorer
from models_registry.card import ModelCard
from models_registry.registry import Registry

PROG = "breastdx lesion-score"
FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    add_model_and_data(parser)
    parser.add_argument("--fit-subset", default="train", help="the split's part to fit on")
    parser.add_argument("--choose-subset", default="val", help="part to choose on (val)")
    parser.add_argument("--max-fp-per-image", type=float, default=1.0, help="false marks (1.0)")
    parser.add_argument(
        "--max-false-lesion-rate", type=float, default=0.4,
        help="share of the lesion-free images marked (0.4)",
    )  # fmt: skip
    parser.add_argument("--l2", type=float, default=30.0, help="ridge on the standardised fit")
    parser.add_argument("--out", type=Path, help="folder for lesion-score.json")
    parser.add_argument("--register-store", type=Path, help="store to register in (the model's)")
    parser.add_argument("--alias", help="alias for the new version, e.g. staging")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING"])
    return parser


def _scores(image: ScoredImage, scorer: LesionScorer | None) -> np.ndarray:
    """Served scores (4 decimals, as ``Lesion.score``): the scorer's, or the peak."""
    raw = image.peaks if scorer is None or not len(image.peaks) else scorer(image.features)
    return np.round(raw, 4)


Scores = list[np.ndarray]  # per image, its regions' served scores (``_scores``)


def detection(images: list[ScoredImage], scores: Scores, threshold: float) -> dict:
    """Lesions hit, false marks per image and lesion-free images marked at ``threshold``."""
    hit = false = lesions = free = marked = 0
    for image, own in zip(images, scores, strict=True):
        kept = [(image.boxes[i], float(s)) for i, s in enumerate(own) if s >= threshold]
        claimed = match_marks(kept, image.truths)
        hit += sum(claimed)
        false += len(claimed) - sum(claimed)
        lesions += len(image.truths)
        if not image.truths:
            free += 1
            marked += bool(kept)
    return {
        "threshold": threshold,
        "lesion_sensitivity": hit / lesions if lesions else float("nan"),
        "false_marks_per_image": false / max(1, len(images)),
        "false_lesion_rate": marked / free if free else 0.0,
        "n_images": len(images),
        "n_lesions": lesions,
        "n_lesion_free_images": free,
    }


def choose_threshold(
    images: list[ScoredImage],
    scores: Scores,
    *,
    max_fp_per_image: float,
    max_false_lesion_rate: float,
) -> dict:
    """The presence threshold on the score with the most lesions hit within both limits
    (ties: fewer false marks, then the higher threshold); the strictest one where none fits."""
    values = sorted({float(s) for own in scores for s in own})
    best: tuple[float, ...] | None = None
    chosen = None
    for threshold in values:
        point = detection(images, scores, threshold)
        if (
            point["false_marks_per_image"] > max_fp_per_image
            or point["false_lesion_rate"] > max_false_lesion_rate
        ):
            continue
        key = (point["lesion_sensitivity"], -point["false_marks_per_image"], threshold)
        if best is None or key > best:
            best, chosen = key, point
    if chosen is None:
        chosen = detection(images, scores, values[-1] if values else 1.0)
    return chosen


def froc(images: list[ScoredImage], scores: Scores) -> dict[str, list[float]]:
    """Per data set, the FROC's sensitivity at ``FP_RATES`` false marks per image."""
    from evaluation.lesions import froc_curve, froc_points

    out = {}
    for dataset in sorted({i.dataset for i in images}):
        part = [(i, s) for i, s in zip(images, scores, strict=True) if i.dataset == dataset]
        values, flags = [], []
        for image, own in part:
            values += own.tolist()
            flags += match_marks(list(zip(image.boxes, own.tolist(), strict=True)), image.truths)
        curve = froc_curve(
            np.asarray(values), np.asarray(flags), len(part), sum(len(i.truths) for i, _ in part)
        )
        out[dataset] = [round(v, 4) for v in froc_points(curve, FP_RATES)]
    return out


def _register(
    args: argparse.Namespace, registry: Registry, card: ModelCard, scorer: LesionScorer,
    threshold: float, fitted_on: str,
) -> ModelCard:  # fmt: skip
    body = card.model_dump(
        mode="json",
        exclude={"name", "version", "registered_at", "onnx", "metrics", "evaluation_sets"},
    )
    body["reduced_precision"] = []  # their figures were measured with the peak
    body["thresholds"]["presence"] = threshold
    body["calibration"]["lesion_score"] = {
        "features": list(FEATURES),
        "coefficients": list(scorer.coefficients),
        "intercept": scorer.intercept,
        "fitted_on": fitted_on,
    }
    onnx = onnx_export_of(card)
    return register_again(
        registry,
        card,
        {**body, "onnx": onnx.model_dump(mode="json")},
        target=Registry([args.register_store]) if args.register_store else None,
        alias=args.alias,
    )


def _run(args: argparse.Namespace) -> int:
    if args.out:  # before the long runs: an unwritable folder fails now, not after registering
        args.out.mkdir(parents=True, exist_ok=True)
    if args.choose_subset == "test" or args.fit_subset == "test":
        print(f"{PROG}: the test split is never fitted or chosen on", file=sys.stderr)
        return 2
    registry, card = segmentation_model(args)
    if card is None:
        print(
            f"{PROG}: model {args.model} is not a {args.stage} segmentation model", file=sys.stderr
        )
        return 2
    if card.thresholds.image_presence > 0:
        print(
            f"{PROG}: {card.ref} gates whole images on its presence output "
            f"(thresholds.image_presence {card.thresholds.image_presence}); a lesion score is "
            "fitted on models without that gate",
            file=sys.stderr,
        )
        return 2
    fit = scored_images(
        located_cases(args, args.fit_subset), card, registry, args.threads, "fit", PROG
    )
    labels = [flag for image in fit for flag in image.labels()]
    features = np.concatenate([i.features for i in fit]) if fit else np.zeros((0, len(FEATURES)))
    try:
        scorer = fit_scorer(features, labels, l2=args.l2)
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    choose = scored_images(
        located_cases(args, args.choose_subset), card, registry, args.threads, "choose", PROG
    )
    limits = {
        "max_fp_per_image": args.max_fp_per_image,
        "max_false_lesion_rate": args.max_false_lesion_rate,
    }
    fitted_scores = [_scores(image, scorer) for image in choose]
    peak_scores = [_scores(image, None) for image in choose]
    fitted = choose_threshold(choose, fitted_scores, **limits)
    peak = choose_threshold(choose, peak_scores, **limits)
    fitted_on = (
        f"{len(labels)} regions ({sum(labels)} hitting a true lesion) of {len(fit)} images of "
        f"the {args.fit_subset!r} part of {args.split.name} at mask threshold "
        f"{card.thresholds.mask}, l2 {args.l2}; presence threshold chosen on "
        f"{args.choose_subset!r}"
    )
    new = _register(args, registry, card, scorer, fitted["threshold"], fitted_on)
    report: dict[str, Any] = {
        "model": card.ref,
        "registered": new.ref,
        "features": list(FEATURES),
        "coefficients": list(scorer.coefficients),
        "intercept": scorer.intercept,
        "fitted_on": fitted_on,
        "limits": limits,
        args.choose_subset: {
            "lesion_score": fitted,
            "peak": peak,
            "froc_rates": list(FP_RATES),
            "froc_lesion_score": froc(choose, fitted_scores),
            "froc_peak": froc(choose, peak_scores),
        },
    }
    if args.out:
        (args.out / "lesion-score.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report[args.choose_subset], indent=2))
    print(
        f"{PROG}: registered {new.ref} (presence {fitted['threshold']} on the fitted score); "
        f"measure it: breastdx evaluate ... --model {new.ref} --register",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Fit, choose and register; exit 0, 1 (the model or store refused) or 2 (usage or data)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.l2 < 0:
        parser.error("--l2 must be >= 0")
    if args.max_fp_per_image < 0:
        parser.error("--max-fp-per-image must be >= 0")
    if not 0 <= args.max_false_lesion_rate <= 1:
        parser.error("--max-false-lesion-rate must lie in [0, 1]")
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    return exit_code(PROG, lambda: _run(args))


if __name__ == "__main__":
    raise SystemExit(main())
