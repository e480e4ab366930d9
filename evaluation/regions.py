"""The regions a segmentation model proposes on labelled images, as served, with their truth.

``scored_images`` runs each case through the service's pipeline (``service.inference``) and
keeps, per image, every region above the card's pixel threshold and minimum area (kept as a
lesion or not): its features for a detection score (``imaging.lesion_score``), its box and peak
in original pixels, its centre in model-input pixels, and the image's true lesion boxes. A region
is true where it hits a true lesion under the FROC's hit rule (``imaging.lesion_match``).
``breastdx lesion-score`` fits a score on them; ``breastdx hard-negatives`` keeps the false ones
as training crop centres.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from breastdx.errors import BreastdxError
from evaluation import formats
from evaluation.cases import Case
from evaluation.cli import SplitUseError, _split_part, restrict
from evaluation.run import Progress
from imaging.lesion_match import Box, hits
from imaging.lesion_score import region_features
from models_registry.card import ModelCard, Runtime, Stage, Task
from models_registry.registry import Registry

CHUNK = 16


@dataclass(frozen=True)
class ScoredImage:
    """One image's regions: features ``(K, F)``, boxes and peaks (original pixels), centres
    ``(K, 2)`` as ``[x, y]`` in model-input pixels, and the image's true lesion boxes."""

    dataset: str
    id: str
    features: np.ndarray
    boxes: list[Box]
    peaks: np.ndarray
    centres: np.ndarray
    truths: list[Box]

    def labels(self) -> list[bool]:
        """Per region: it hits a true lesion (each region on its own)."""
        return [any(hits(box, truth) for truth in self.truths) for box in self.boxes]


def add_model_and_data(parser: argparse.ArgumentParser) -> None:
    """The arguments naming a segmentation model and its labelled data with their split."""
    parser.add_argument("--stage", required=True, choices=["mammography", "ultrasound"])
    parser.add_argument("data", nargs="+", type=Path, metavar="DATA", help="data set folders")
    parser.add_argument("--model", help="NAME, NAME@ALIAS or NAME@VERSION (default: the stage's)")
    parser.add_argument("--store", action="append", help="model store (repeatable)")
    parser.add_argument("--format", choices=sorted(formats.FORMATS), help="data-set format")
    parser.add_argument("--split", type=Path, required=True, help="the model's split file")
    parser.add_argument("--threads", type=int, default=2, help="model threads (2)")


def segmentation_model(args: argparse.Namespace) -> tuple[Registry, ModelCard | None]:
    """The registry of ``--store`` and the card ``--model`` names (``args.model`` set to the
    stage's default where not given), or None where it is not a segmentation model of
    ``--stage``."""
    from service.inference.pipeline import default_model_ref

    registry = Registry(args.store) if args.store else Registry.default()
    args.model = args.model or default_model_ref(Stage(args.stage), registry)
    card = registry.card(args.model)
    if card.stage.value != args.stage or card.task is not Task.SEGMENTATION:
        return registry, None
    return registry, card


def located_cases(args: argparse.Namespace, subset: str) -> list[Case]:
    """The located cases (lesion masks, circles or boxes) of the split's ``subset``."""
    part = _split_part(args.split, subset)
    cases: list[Case] = []
    for root in args.data:
        fmt = formats.get_format(args.format) if args.format else formats.detect_format(root)
        found = formats.read_cases(root, fmt)
        cases += [c for c in restrict(found, part, found[0].dataset, root)[0] if c.truth != "none"]
    if not cases:
        raise SplitUseError(
            f"split {args.split} names no image with lesion truth of this data in {subset!r}"
        )
    return cases


def scored_images(
    cases: list[Case], card: ModelCard, registry: Registry, threads: int, label: str, prog: str
) -> list[ScoredImage]:
    """Every case run through the service's pipeline (ONNX Runtime, the reference); each
    image's regions and truth. A case the pipeline refuses is skipped with a message."""
    from evaluation.score import truth_boxes, truth_mask
    from service.inference import RunnerOptions, analyse_each

    options = RunnerOptions(intra_op_threads=threads, runtime=Runtime.ONNXRUNTIME, measuring=True)
    progress = Progress(len(cases), label)
    out: list[ScoredImage] = []
    for start in range(0, len(cases), CHUNK):
        chunk = cases[start : start + CHUNK]
        outcomes = analyse_each(
            card.stage, [c.image_path for c in chunk], registry=registry, model_ref=card,
            options=options,
        )  # fmt: skip
        for case, outcome in zip(chunk, outcomes, strict=True):
            if isinstance(outcome, BreastdxError):
                print(f"{prog}: skipped {case.image_path}: {outcome}", file=sys.stderr)
                continue
            shape = (outcome.result.input.rows, outcome.result.input.columns)
            mask = truth_mask(case, shape) if case.truth == "mask" else None
            regions = outcome.regions
            centres = [(x + w / 2, y + h / 2) for x, y, w, h in (r.bbox for r in regions)]
            geometry = outcome.geometry
            out.append(
                ScoredImage(
                    dataset=case.dataset,
                    id=case.id,
                    features=region_features(
                        np.asarray([r.peak for r in regions]),
                        np.asarray([r.mean_probability for r in regions]),
                        np.asarray([r.area_px for r in regions]),
                        shape[0] * shape[1],
                    ),
                    boxes=[tuple(float(v) for v in r.bbox) for r in regions],  # type: ignore[misc]
                    peaks=np.asarray([r.peak for r in regions], np.float64),
                    centres=(
                        geometry.map_points(centres, inverse=False)
                        if geometry is not None and centres
                        else np.zeros((0, 2))
                    ),
                    truths=truth_boxes(case, mask, shape),
                )
            )
        progress.advance(len(chunk), len(chunk))
    return out
