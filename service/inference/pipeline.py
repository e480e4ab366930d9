"""The torch-free inference pipeline: image bytes or paths -> one ``Analysis`` per image.

The model is pinned once per request (``pinning.pin_model``, or the card a caller pinned
earlier). Per image, once: ``imaging.decode`` -> the frame the card's frame policy picks -> its
display image -> stage check (``inputs.check_input``, or the ``CheckedInput`` the submission
check made) -> ``imaging.preprocess.preprocess_decoded`` with the card's ``PreprocessConfig``
(histopathology: each tile window through ``imaging.preprocess.preprocess``).
The images of one request then run together in the model's ONNX Runtime session (in chunks of
``max_batch``). Segmentation: the mask probabilities go through ``postprocess_mask`` with the
card's thresholds and the image's pixel spacing; the malignancy logit is divided by the card's
temperature before its activation. The same function serves the CLI, the API and the workers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np

from breastdx.errors import BreastdxError
from imaging.geometry import Geometry
from imaging.limits import DEFAULT_MAX_PIXELS
from imaging.postprocess import MaskResult, postprocess_mask, to_uint8
from imaging.preprocess import PreprocessConfig, preprocess_decoded
from imaging.record import DecodedImage
from models_registry.card import ModelCard, Stage
from models_registry.registry import Registry
from models_registry.runtime import WORK
from service.inference import histopathology as histo
from service.inference.batching import BatchPolicy, run_model
from service.inference.inputs import CheckedInput, check_input
from service.inference.pinning import check_serves, default_model_ref, pin_model
from service.inference.result import (
    Analysis,
    AnalysisResult,
    Histopathology,
    Timings,
    histopathology_info,
    input_info,
    malignancy_info,
    mask_summary,
    model_info,
)
from service.inference.runner import ModelRunner, RunnerOptions, get_runner
from service.inference.stages import parse_stage

__all__ = ["MAX_BATCH", "Outcome", "Source", "analyse", "analyse_each", "default_model_ref"]

logger = logging.getLogger(__name__)

Source = bytes | Path
Outcome = Analysis | BreastdxError
MAX_BATCH = 64
STEPS = ("decode", "preprocess", "inference", "postprocess")


@dataclass
class _Item:
    """One checked input on its way through the pipeline."""

    decoded: DecodedImage
    frame_index: int
    display: np.ndarray  # (H, W) or (H, W, 3) in [0, 1]
    warnings: list[str]
    ms: dict[str, float] = field(default_factory=dict)
    batch: np.ndarray | None = None  # (K, C, h, w): the image, or the tissue windows of a tile
    geometry: Geometry | None = None  # segmentation: original -> model input
    plan: histo.TilePlan | None = None  # histopathology: the windows


@dataclass(frozen=True)
class _Request:
    """What every input of one request shares."""

    runner: ModelRunner
    stage: Stage
    config: PreprocessConfig
    tiles: histo.TileOptions
    window: tuple[int, int] | None  # histopathology window, original pixels
    max_pixels: int


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


def _prepare(request: _Request, source: Source | CheckedInput) -> _Item:
    """Check the input (unless the submission check did), then preprocess it: the image, or
    the windows of a tile."""
    if not isinstance(source, CheckedInput):
        frame_policy = request.config.frame_policy
        source = check_input(request.stage, source, frame_policy, request.max_pixels)
    item = _Item(source.decoded, source.frame_index, source.display, list(source.warnings))
    item.ms["decode"] = source.decode_ms
    start = time.perf_counter()
    if request.window is None:
        chw, item.geometry, _ = preprocess_decoded(
            item.decoded, request.config, frame_index=item.frame_index, display=item.display
        )  # (C, h, w)
        item.batch = chw[None]  # (1, C, h, w)
    else:
        item.plan = histo.plan_tiles(item.display, request.window, request.tiles)
        item.warnings += histo.check_tissue(item.display, item.plan)  # the stage's pixel rule
        item.batch = histo.window_batch(item.display, item.plan, request.config)  # (K, C, h, w)
    item.ms["preprocess"] = round(source.check_ms + _ms(start), 3)
    return item


def _finish(
    request: _Request,
    item: _Item,
    masks: MaskResult,
    probability: float | None,
    histology: Histopathology | None = None,
    batch_size: int = 1,
    temperature: float | None = None,
) -> Analysis:
    item.ms["total"] = round(sum(item.ms.get(step, 0.0) for step in STEPS), 3)
    card = request.runner.card
    result = AnalysisResult(
        stage=request.stage,
        model=model_info(request.runner),
        input=input_info(item.decoded, item.frame_index),
        malignancy=malignancy_info(card, probability, temperature),
        lesions=masks.lesions,
        mask=mask_summary(masks),
        histopathology=histology,
        batch_size=batch_size,
        timings_ms=Timings(**item.ms),
        warnings=item.warnings,
    )
    mask = np.where(masks.mask, 255, 0).astype(np.uint8)  # (H, W)
    return Analysis(
        result=result,
        mask=mask,
        display=to_uint8(item.display),
        candidates=masks.candidates,
        regions=masks.regions,
        geometry=item.geometry,
    )


def _threshold(value: float) -> float:
    return float(np.clip(value, 1e-6, 1.0 - 1e-6))  # postprocess_mask takes (0, 1)


def _segmentation(
    request: _Request,
    item: _Item,
    mask_prob: np.ndarray | None,
    probability: float | None,
    batch_size: int,
    lesion_map: np.ndarray | None = None,
    present: bool = True,
    temperature: float | None = None,
) -> Analysis:
    """Mask probabilities ``(h, w)`` -> lesions and overlay at the original geometry; each
    lesion's own malignancy from the per-pixel map ``(h, w)`` where the model has one. With
    ``present`` false (the presence output below the card's ``image_presence``) no region is
    a lesion. ``temperature``: the one ``probability`` was calibrated with (default: the
    card's image temperature)."""
    start = time.perf_counter()
    card, geometry = request.runner.card, item.geometry
    if geometry is None:  # pragma: no cover - _prepare sets it for every segmentation item
        raise RuntimeError("a segmentation item has no geometry")
    masks = postprocess_mask(
        mask_prob if mask_prob is not None else np.zeros(geometry.output_hw, np.float32),
        geometry,
        threshold=_threshold(card.thresholds.mask),
        min_area_px=card.thresholds.min_lesion_area_px,
        pixel_spacing_mm=item.decoded.metadata.pixel_spacing_mm,
        presence_threshold=card.thresholds.presence,
        malignancy_map=lesion_map,
        present=present,
        scorer=card.calibration.lesion_score.scorer() if card.calibration.lesion_score else None,
    )
    item.ms["postprocess"] = round(item.ms["postprocess"] + _ms(start), 3)  # overlay: lazy
    return _finish(
        request, item, masks, probability, batch_size=batch_size, temperature=temperature
    )


def _histopathology(
    request: _Request, item: _Item, window_probs: np.ndarray, batch_size: int
) -> Analysis:
    """Window probabilities ``(K,)`` -> image score, heatmap, thresholded regions."""
    start = time.perf_counter()
    plan, card, tiles = item.plan, request.runner.card, request.tiles
    if plan is None:  # pragma: no cover - _prepare sets it for every histopathology item
        raise RuntimeError("a histopathology item has no tile plan")
    probability = histo.aggregate(window_probs, tiles)
    prob_map = histo.probability_map(plan, window_probs)  # (H, W), NaN off tissue
    masks = postprocess_mask(
        np.nan_to_num(prob_map, nan=0.0),
        Geometry(plan.image_hw),
        threshold=_threshold(card.thresholds.malignancy),
        min_area_px=card.thresholds.min_lesion_area_px,
        pixel_spacing_mm=item.decoded.metadata.pixel_spacing_mm,
    )
    if probability is None:
        item.warnings.append("no tissue found: every window is mostly white background")
    histology = histopathology_info(plan, window_probs, tiles)
    item.ms["postprocess"] = round(item.ms["postprocess"] + _ms(start), 3)
    return _finish(request, item, masks, probability, histology, batch_size)  # heatmap: lazy


def _split(values: np.ndarray | None, sizes: Sequence[int]) -> list[np.ndarray | None]:
    """Cut a batch-wide array back into per-item parts of ``sizes`` rows."""
    if values is None:
        return [None] * len(sizes)
    bounds = np.cumsum([0, *sizes])
    return [values[a:b] for a, b in pairwise(bounds)]


def lesion_weighted_malignancy(
    mask_prob: np.ndarray | None, lesion_map: np.ndarray | None, fallback: float | None
) -> float | None:
    """An image's malignancy derived from its lesions (``Calibration.image_malignancy``
    ``lesion_weighted``): the per-pixel lesion malignancy ``(h, w)`` averaged with the lesion
    probabilities ``(h, w)`` as weights, so the pixels most likely to be lesion speak; an image
    with no lesion probability at all keeps ``fallback`` (the image head)."""
    if mask_prob is None or lesion_map is None:
        return fallback
    weight = float(mask_prob.sum(dtype=np.float64))
    if weight <= 1e-6:
        return fallback
    return float((mask_prob * lesion_map).sum(dtype=np.float64) / weight)


def _infer(
    request: _Request, items: list[_Item], max_batch: int, batching: BatchPolicy | None = None
) -> list[Analysis]:
    """One batched run over every item's inputs (merged with other requests' runs where
    ``batching`` is on: ``service.inference.batching``), then per-item post-processing."""
    runner = request.runner
    batches = [item.batch for item in items if item.batch is not None]
    sizes = [len(batch) for batch in batches]
    start = time.perf_counter()
    together = len(items)
    outputs: dict[str, np.ndarray] = {}
    if sum(sizes):
        ran = run_model(runner, np.concatenate(batches), max_batch, batching, len(items))
        outputs, together = ran.outputs, ran.images
    inference_ms = _ms(start)
    start = time.perf_counter()
    malignancy = _split(runner.malignancy(outputs) if outputs else None, sizes)
    masks = _split(runner.mask(outputs) if outputs else None, sizes)
    lesion_maps = _split(runner.lesion_malignancy(outputs) if outputs else None, sizes)
    presences = _split(runner.presence(outputs) if outputs else None, sizes)
    activation_ms = _ms(start)  # the batch's outputs to probabilities: post-processing
    results = []
    for item, probs, mask_prob, lesion_map, presence in zip(
        items, malignancy, masks, lesion_maps, presences, strict=True
    ):
        item.ms["inference"] = inference_ms
        item.ms["postprocess"] = activation_ms
        if request.stage is Stage.HISTOPATHOLOGY:
            window_probs = probs if probs is not None else np.zeros(0)
            results.append(_histopathology(request, item, window_probs, together))
        else:
            probability = float(probs[0]) if probs is not None and len(probs) else None
            prob_map = mask_prob[0] if mask_prob is not None else None
            own = lesion_map[0] if lesion_map is not None else None
            temperature = None  # the image head's, the card's calibration.temperature
            if runner.card.calibration.image_malignancy == "lesion_weighted":
                derived = lesion_weighted_malignancy(prob_map, own, None)
                if derived is not None:  # else the head's probability stands
                    probability = derived
                    temperature = runner.card.calibration.lesion_temperature
            present = presence is None or bool(presence[0] >= runner.card.thresholds.image_presence)
            results.append(
                _segmentation(
                    request, item, prob_map, probability, together, own, present, temperature
                )
            )
    return results


def _request(
    stage: Stage | str,
    registry: Registry,
    model_ref: str | ModelCard | None,
    options: RunnerOptions | None,
    tiles: histo.TileOptions | None,
    max_pixels: int,
) -> _Request:
    """The stage, and the model pinned once (or as pinned by the caller) with its session."""
    stage = parse_stage(stage)
    if isinstance(model_ref, ModelCard):
        card = check_serves(model_ref, stage)
    else:
        card = pin_model(stage, registry, model_ref)
    runner = get_runner(card.ref, registry, options)
    tiles = tiles or histo.TileOptions()
    window = histo.window_size(card, tiles) if stage is Stage.HISTOPATHOLOGY else None
    return _Request(runner, stage, card.preprocess_config(), tiles, window, max_pixels)


def analyse_each(
    stage: Stage | str,
    inputs: Sequence[Source | CheckedInput],
    *,
    registry: Registry,
    model_ref: str | ModelCard | None = None,
    options: RunnerOptions | None = None,
    tiles: histo.TileOptions | None = None,
    max_batch: int = MAX_BATCH,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    batching: BatchPolicy | None = None,
) -> list[Outcome]:
    """Like :func:`analyse`, but a failing input yields its typed error in its place.

    ``inputs`` may hold the ``CheckedInput`` objects a submission check made (not decoded or
    checked again), and ``model_ref`` the card it pinned (not resolved again). Errors of the
    request as a whole (unknown stage or model, a tampered model file, a model of another stage)
    are raised. ``batching``: merge the model run with concurrent requests' runs
    (``service.inference.batching``); None: this request's images alone.
    """
    request = _request(stage, registry, model_ref, options, tiles, max_pixels)
    with WORK.held():  # the runtime tells a run alone from runs competing for the cores
        prepared: list[_Item | BreastdxError] = []
        for source in inputs:
            try:
                prepared.append(_prepare(request, source))
            except BreastdxError as exc:  # per input: one bad image must not fail the others
                prepared.append(exc)
        items = [p for p in prepared if isinstance(p, _Item)]
        done = iter(_infer(request, items, max_batch, batching) if items else [])
    outcomes: list[Outcome] = [p if isinstance(p, BreastdxError) else next(done) for p in prepared]
    failed = len(prepared) - len(items)
    logger.info(
        "analysed %d image(s), %d refused",
        len(prepared),
        failed,
        extra={"model": request.runner.ref, "stage": request.stage.value},
    )
    return outcomes


def analyse(
    stage: Stage | str,
    inputs: Sequence[Source | CheckedInput],
    *,
    registry: Registry,
    model_ref: str | ModelCard | None = None,
    options: RunnerOptions | None = None,
    tiles: histo.TileOptions | None = None,
    max_batch: int = MAX_BATCH,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[Analysis]:
    """Analyse every input of one request in one batch; the first failing input's error raises.

    Args:
        stage: mammography, ultrasound or histopathology (a name is converted by
            ``parse_stage``: an unknown one is ``UnknownStageError``).
        inputs: image bytes or paths (DICOM, PNG, JPEG, PGM, TIFF), or inputs checked earlier.
        registry: where the model is loaded from (sha256 checked on first load).
        model_ref: ``name``, ``name@alias`` or ``name@version``, or a card pinned earlier;
            None: the stage's model.
        options: ONNX Runtime session options (threads, fp16, providers).
        tiles: histopathology tiling; None: ``TileOptions()``.
        max_batch: most images (or tile windows) per ONNX Runtime run.
        max_pixels: decompression-bomb guard passed to ``imaging.decode``.

    Raises:
        ImagingError, WrongStageError: an input cannot be decoded or does not fit the stage.
        RegistryError, ModelStageMismatchError, NoModelForStageError: the model is unusable.
    """
    outcomes = analyse_each(
        stage,
        inputs,
        registry=registry,
        model_ref=model_ref,
        options=options,
        tiles=tiles,
        max_batch=max_batch,
        max_pixels=max_pixels,
    )
    for outcome in outcomes:
        if isinstance(outcome, BreastdxError):
            raise outcome
    return [o for o in outcomes if isinstance(o, Analysis)]
