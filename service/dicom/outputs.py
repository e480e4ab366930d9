"""One analysis -> its DICOM results: SEG, Comprehensive SR (TID 1500) and SC overlay.

When nothing was found there is no SEG (an all-empty "Lesion" segment would claim a lesion): the
SR states the absence, and the SC shows the image unmarked. Each result has new Series and SOP
Instance UIDs, joins the source's study (Patient and Study modules copied from the source),
references the source instance (and frame), and names breastdx and the model as described in
``service.dicom.identity``. See ``seg``, ``sr`` and ``sc`` for each object's content.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from breastdx.errors import BreastdxError
from models_registry.card import ModelCard
from service.dicom.identity import Producer, Source, SourceHeaderError, to_bytes
from service.dicom.sc import build_sc
from service.dicom.seg import build_seg
from service.dicom.sr import build_sr
from service.inference.result import Analysis

__all__ = [
    "NoLesionFoundError",
    "ResultObjects",
    "build_outputs",
    "build_seg_and_sr",
    "has_finding",
]


class NoLesionFoundError(BreastdxError):
    """A SEG asked of an analysis that found no lesion: there is no segment to write."""

    code = "no_lesion_found"
    title = "No lesion found: there is no segmentation"
    http_status = 404


def has_finding(analysis: Analysis) -> bool:
    """True when the analysis found a lesion (a mask pixel or a lesion)."""
    return bool(analysis.result.lesions) or bool(np.any(analysis.mask))


@dataclass(frozen=True)
class ResultObjects:
    """The DICOM results of one analysed instance."""

    source_sop_instance_uid: str
    model_ref: str
    seg: Dataset | None  # None: no lesion found
    sr: Dataset
    sc: Dataset

    @property
    def datasets(self) -> list[Dataset]:
        """SEG (when there is one), SR and SC."""
        return [ds for ds in (self.seg, self.sr, self.sc) if ds is not None]

    def encoded(self) -> list[bytes]:
        """Each result in the DICOM file format."""
        return [to_bytes(ds) for ds in self.datasets]


def _check(header: Dataset, analysis: Analysis, card: ModelCard) -> Source:
    result = analysis.result
    if result.model.ref != card.ref:
        raise SourceHeaderError(
            f"the analysis was made by {result.model.ref}; its outputs need that model's card, "
            f"not {card.ref}"
        )
    rows, columns = int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0)
    if (rows, columns) != analysis.mask.shape[:2]:
        raise SourceHeaderError(
            f"the mask is {analysis.mask.shape[0]}x{analysis.mask.shape[1]} but the source "
            f"frame is {rows}x{columns}; outputs must match the source pixel for pixel"
        )
    return Source(header, frame_number=result.input.frame_index + 1)


def _seg_and_sr(
    header: Dataset, analysis: Analysis, card: ModelCard
) -> tuple[Source, Producer, Dataset | None, Dataset]:
    source = _check(header, analysis, card)
    producer = Producer(card)
    seg = build_seg(source, analysis.mask, producer) if has_finding(analysis) else None
    return source, producer, seg, build_sr(source, analysis.result, producer, seg)


def build_seg_and_sr(
    header: Dataset, analysis: Analysis, card: ModelCard
) -> tuple[Dataset | None, Dataset]:
    """SEG and the SR that references it, as in :func:`build_outputs` (no SC): what the API serves.
    The SEG is None when no lesion was found.

    Raises:
        SourceHeaderError: the header does not match the analysis (geometry or model).
    """
    _, _, seg, sr = _seg_and_sr(header, analysis, card)
    return seg, sr


def build_outputs(
    header: Dataset,
    analysis: Analysis,
    card: ModelCard,
    stored: tuple[Dataset | None, Dataset] | None = None,
) -> ResultObjects:
    """SEG (None when no lesion was found), SR and SC of ``analysis`` of the instance ``header``.

    Args:
        header: the source dataset (pixel data not needed).
        analysis: the pipeline's result for that instance.
        card: the card of the model that made it (``analysis.result.model.ref``).
        stored: the SEG and SR the job already built and serves (``service.dicom.artefacts``);
            they are sent as they are, so the PACS holds the very instances (same SOP Instance
            UIDs) that ``GET .../seg.dcm`` and ``sr.dcm`` return. Only the SC is built here.

    Raises:
        SourceHeaderError: the header does not match the analysis (geometry or model).
    """
    if stored is None:
        source, producer, seg, sr = _seg_and_sr(header, analysis, card)
    else:
        source, producer = _check(header, analysis, card), Producer(card)
        seg, sr = stored
    sc = build_sc(source, analysis.overlay, analysis.result, producer)
    return ResultObjects(source.sop_instance_uid, card.ref, seg, sr, sc)
