"""A trained checkpoint -> ONNX (+ optional fp16) with parity checked and a model card drafted.

``export_checkpoint`` rebuilds the network from the configuration saved in ``best.pt``, exports
it with the TorchScript exporter (``dynamo=False``: the dynamo exporter needs ``onnxscript``) at a
stated opset, with one input ``image`` ``(N, C, H, W)`` whose batch axis ``N`` is dynamic and the
model's named outputs (``mask_logits``, ``malignancy_logit`` or ``class_logits``). It then runs
the parity check of ``training.parity`` on real images (torch eager vs ONNX Runtime; for fp16,
the fp32 ONNX file vs the fp16 one) and fails with ``ParityError`` when a figure misses its
tolerance; every other installed runtime (OpenVINO) is checked against torch on the same images
with the carded file's tolerance, and the card's ``runtimes`` lists those that pass. With
``weights_fp16`` the file written stores its weights as float16 with float32 compute
(``training.export_weights``): the float32 export is checked first, then the smaller file against
torch under ``WEIGHTS_FP16_TOLERANCE``, and the card describes the smaller file. Last, it drafts
the model card (``training.export_card``) and writes it beside the ONNX file as
``<stem>.card.json``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from breastdx.errors import BreastdxError
from models_registry.card import CardDraft, Thresholds
from training.checkpoint import load_checkpoint
from training.config import ConfigError, Task, TrainConfig, config_from_dict
from training.export_weights import store_weights_fp16
from training.models import BreastdxModel, OnnxExportWrapper
from training.parity import (
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    WEIGHTS_FP16_TOLERANCE,
    ExportError,
    ParityReport,
    Tolerance,
    check_onnx,
    check_runtimes,
    load_images,
    onnx_outputs,
    torch_outputs,
)

logger = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "image"
BATCH_DIM = "N"
SPLIT_FILE = "split.json"
MIN_LESION_AREA_PX = 16  # imaging.postprocess.postprocess_mask's default


@dataclass(frozen=True, eq=False)
class TrainedRun:
    """A checkpoint's network (eval mode, CPU, weights loaded) with what was saved beside it."""

    checkpoint: Path
    config: TrainConfig
    model: BreastdxModel
    state: dict[str, Any]  # epoch, metric, monitor, git_commit (weights dropped)

    @property
    def run_dir(self) -> Path:
        return self.checkpoint.parent

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.model.output_names


@dataclass(frozen=True)
class ExportResult:
    """What ``export_checkpoint`` wrote and measured."""

    onnx_path: Path
    card_path: Path
    draft: CardDraft
    parity: ParityReport
    fp16_path: Path | None = None
    fp16_parity: ParityReport | None = None
    parity_sources: tuple[Path, ...] = field(default=())
    fp32_parity: ParityReport | None = None  # set when onnx_path stores fp16 weights

    @property
    def weights_fp16(self) -> bool:
        return self.fp32_parity is not None


def load_trained(checkpoint: Path) -> TrainedRun:
    """Rebuild the network of ``checkpoint`` (``best.pt``) from its saved config and weights."""
    from training.trainer import build_model

    checkpoint = Path(checkpoint)
    try:
        state = load_checkpoint(checkpoint)
    except FileNotFoundError as exc:
        raise ExportError(str(exc), checkpoint=checkpoint.name) from exc
    except Exception as exc:  # torch.load raises many types for a damaged file
        raise ExportError(f"{checkpoint.name} is not a readable checkpoint ({exc})") from exc
    if not isinstance(state.get("config"), dict) or "model" not in state:
        raise ExportError(
            f"{checkpoint.name} is not a trainer checkpoint: it must hold 'model' weights and the "
            "resolved 'config' (training.trainer writes both)"
        )
    try:
        config = config_from_dict(state["config"])
    except ConfigError as exc:
        raise ExportError(
            f"the config saved in {checkpoint.name} is invalid: {exc.message}"
        ) from exc
    no_download = config.model.model_copy(update={"pretrained": None})  # weights come from state
    model = build_model(config.model_copy(update={"model": no_download}))
    if not isinstance(model, BreastdxModel):
        raise ExportError(f"model {config.model.name!r} is not a training.models.BreastdxModel")
    model.load_state_dict(state["model"])
    model.eval()
    kept = {k: v for k, v in state.items() if k not in ("model", "optimizer", "scaler")}
    return TrainedRun(checkpoint, config, model, kept)


def export_onnx(run: TrainedRun, path: Path, *, opset: int = OPSET) -> Path:
    """Export ``run.model`` to ``path``: input ``image`` ``(N, C, H, W)``, dynamic ``N``."""
    pre = run.config.preprocess
    dummy = torch.zeros(2, pre.channels, *pre.input_size)  # (B, C, H, W)
    names = list(run.output_names)
    axes = {name: {0: BATCH_DIM} for name in [INPUT_NAME, *names]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            OnnxExportWrapper(run.model).eval(),
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(path))
    return path


def export_fp16(source: Path, target: Path) -> Path:
    """fp16 weights and compute, float32 input and outputs (``keep_io_types=True``)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))
    return target


def split_images(run_dir: Path, split: str = "test", n: int = 32) -> list[Path]:
    """Up to ``n`` image files of one side of the run's ``split.json``, in split order."""
    from training.data.splits import Split

    path = run_dir / SPLIT_FILE
    if not path.is_file():
        raise ExportError(f"the run folder has no {SPLIT_FILE}; give --parity-images instead")
    document = Split.load(path)
    ids = document.ids(split)
    if not ids:
        valid = ", ".join(document.names())
        raise ExportError(f"split {split!r} of {SPLIT_FILE} is empty or unknown; splits: {valid}")
    files = [Path(document.samples[i].image_path) for i in ids[:n]]
    if not all(f.is_file() for f in files):  # a split made under another data root
        files = _images_under_config_root(run_dir, ids[:n]) or files
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ExportError(
            f"{len(missing)} image(s) of split {split!r} are missing (e.g. {missing[0]}); the "
            "data must be where training read it, or give --parity-images"
        )
    return files


def _images_under_config_root(run_dir: Path, ids: Sequence[str]) -> list[Path] | None:
    """Images of ``ids`` read under the run's own ``data.root`` (None if that cannot be done).

    A split file names the images where they were when it was made; a run that reused it under
    another data root (``$BREASTDX_DATA_ROOT``) verified them by sha256, so their ids hold.
    """
    from training.checkpoint import CONFIG
    from training.config import load_config
    from training.torch_dataset import read_samples

    try:
        data = load_config(run_dir / CONFIG).data
        by_id = {s.id: Path(s.image_path) for s in read_samples(data.dataset.value, data.root)}
    except (BreastdxError, OSError):
        return None
    return [by_id[i] for i in ids] if all(i in by_id for i in ids) else None


def _check_files(
    run: TrainedRun,
    out: Path,
    fp16_out: Path | None,
    batch: np.ndarray,
    tolerance: Tolerance,
    fp16_tolerance: Tolerance,
    reference: dict[str, np.ndarray],
) -> tuple[ParityReport, ParityReport | None]:
    """Parity of the fp32 file against torch, and of the fp16 file (if any) against fp32."""
    names = run.output_names
    parity = check_onnx(reference, out, batch, tolerance=tolerance, label="torch vs onnx fp32")
    if fp16_out is None:
        return parity, None
    export_fp16(out, fp16_out)
    fp32 = onnx_outputs(out, batch, names)
    fp16_parity = check_onnx(
        fp32, fp16_out, batch, tolerance=fp16_tolerance, label="onnx fp32 vs onnx fp16"
    )
    return parity, fp16_parity


def _weights_fp16(
    reference: dict[str, np.ndarray],
    source: Path,
    target: Path,
    batch: np.ndarray,
    tolerance: Tolerance,
) -> ParityReport:
    """Write ``target`` with fp16 weight storage and check it against torch."""
    try:
        storage = store_weights_fp16(source, target)
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    logger.info(
        "fp16 weight storage: %d initializers converted, %d bytes -> %d bytes",
        storage.converted, storage.bytes_before, storage.bytes_after,
    )  # fmt: skip
    return check_onnx(
        reference, target, batch, tolerance=tolerance, label="torch vs onnx fp16 weights"
    )


def export_checkpoint(
    checkpoint: Path,
    out: Path,
    *,
    parity_images: Sequence[Path],
    fp16: bool = False,
    weights_fp16: bool = False,
    tolerance: Tolerance = FP32_TOLERANCE,
    fp16_tolerance: Tolerance = FP16_TOLERANCE,
    weights_fp16_tolerance: Tolerance = WEIGHTS_FP16_TOLERANCE,
    thresholds: Thresholds | None = None,
    opset: int = OPSET,
    name: str | None = None,
    operating_point_split: str | None = None,
    max_false_lesion_rate: float = 0.10,
    max_fp_per_image: float | None = None,
    image_malignancy: str = "head",
) -> ExportResult:
    """Export, check parity on ``parity_images``, draft and write the card.

    ``weights_fp16`` writes ``out`` with float16 weight storage (the float32 export, checked
    first, is removed); it excludes ``fp16``. ``operating_point_split`` (segmentation, e.g.
    ``"val"``) chooses the card's mask, presence and malignancy thresholds and the lesion
    temperature with the exported file on that split (``training.operating_point``); they replace
    those of ``thresholds``, and the choice is written beside the card; ``max_fp_per_image``
    makes it a detection operating point (most lesions hit at that many false marks per image).
    ``image_malignancy="lesion_weighted"`` (a model with a lesion malignancy output) has the
    service derive each image's malignancy from its lesions (``Calibration.image_malignancy``).

    Raises:
        ExportError: the checkpoint or its run folder lacks something the card needs.
        ParityError: ONNX Runtime does not reproduce torch (or fp16 the fp32 file) in tolerance.
    """
    from training.export_card import build_card_draft

    if fp16 and weights_fp16:
        raise ExportError("an fp16 variant and fp16 weight storage exclude each other; pick one")
    run = load_trained(checkpoint)
    if image_malignancy == "lesion_weighted" and "lesion_malignancy_logits" not in run.output_names:
        raise ExportError(
            "--image-malignancy lesion_weighted needs a model with a lesion malignancy output "
            "(model.options.lesion_malignancy: true); this one has " + ", ".join(run.output_names)
        )
    out = Path(out)
    batch = load_images(parity_images, run.config.preprocess)  # (N, C, H, W)
    fp16_out = out.with_suffix(".fp16.onnx")
    fp32_out = out.with_suffix(".fp32.onnx") if weights_fp16 else out
    fp32_parity = None
    try:
        export_onnx(run, fp32_out, opset=opset)
        reference = torch_outputs(run.model, batch, run.output_names)
        parity, fp16_parity = _check_files(
            run, fp32_out, fp16_out if fp16 else None, batch, tolerance, fp16_tolerance, reference
        )
        if weights_fp16:
            fp32_parity = parity
            parity = _weights_fp16(reference, fp32_out, out, batch, weights_fp16_tolerance)
        runtimes = check_runtimes(reference, out, batch, parity, tolerance=parity.tolerance)
    except ExportError:  # a file that failed its check must not be mistaken for a good one
        for path in (out, fp16_out, fp32_out):
            path.unlink(missing_ok=True)
        raise
    finally:
        if weights_fp16:
            fp32_out.unlink(missing_ok=True)  # the float32 file of the shipped one: not kept
    thresholds = thresholds or Thresholds(min_lesion_area_px=MIN_LESION_AREA_PX)
    lesion_temperature = None
    if operating_point_split is not None and run.config.task is Task.SEGMENTATION:
        from training.operating_point import tune

        point = tune(
            out,
            run.run_dir,
            split=operating_point_split,
            min_area=thresholds.min_lesion_area_px,
            max_false_lesion_rate=max_false_lesion_rate,
            max_fp_per_image=max_fp_per_image,
            image_malignancy=image_malignancy,
        )
        point.save(out.with_suffix(".operating-point.json"))
        thresholds = thresholds.model_copy(
            update={
                "mask": point.mask,
                "presence": point.presence,
                "image_presence": point.image_presence,
                "malignancy": point.malignancy,
            }
        )
        lesion_temperature = point.lesion_temperature
    draft = build_card_draft(
        run,
        parity=parity,
        fp16_parity=fp16_parity,
        fp32_parity=fp32_parity,
        opset=opset,
        thresholds=thresholds,
        name=name,
        lesion_temperature=lesion_temperature,
        image_malignancy=image_malignancy,
        runtimes=runtimes,
    )
    card_path = out.with_suffix(".card.json")
    card_path.write_text(draft.model_dump_json(indent=2) + "\n", encoding="utf-8")
    logger.info("exported %s (%s) to %s", run.config.model.name, parity.describe(), out.name)
    return ExportResult(
        onnx_path=out,
        card_path=card_path,
        draft=draft,
        parity=parity,
        fp16_path=fp16_out if fp16 else None,
        fp16_parity=fp16_parity,
        parity_sources=tuple(Path(p) for p in parity_images),
        fp32_parity=fp32_parity,
    )


def result_summary(result: ExportResult) -> dict[str, Any]:
    """A JSON-ready summary for the command line."""

    def figures(report: ParityReport | None) -> dict[str, Any] | None:
        if report is None:
            return None
        return {
            "max_abs_prob_diff": report.max_abs_prob_diff,
            "mask_agreement": report.mask_agreement,
            "n_images": report.n_images,
            "tolerance": report.tolerance.prob,
            "min_mask_agreement": report.tolerance.mask_agreement,
        }

    return {
        "onnx": str(result.onnx_path),
        "fp16": str(result.fp16_path) if result.fp16_path else None,
        "weights_fp16": result.weights_fp16,
        "card": str(result.card_path),
        "opset": result.draft.onnx.opset,
        "parity": figures(result.parity),
        "fp16_parity": figures(result.fp16_parity),
        "fp32_parity": figures(result.fp32_parity),
        "runtimes": [r.model_dump(mode="json") for r in result.draft.runtimes or []],
    }
