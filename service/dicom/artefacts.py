"""The DICOM SEG and SR of an API job, built when the analysis succeeds and kept beside its PNGs.

``GET /v1/analyses/{id}/seg.dcm`` and ``sr.dcm`` serve what :func:`dicom_artefacts` builds here
with the listener's builders (``service.dicom.outputs.build_seg_and_sr``): the SEG of the mask
and the TID 1500 SR that references it.

Design: built once, in the job's execution (``service.jobs.execute``, the same in an RQ worker
and in the in-process pool), while the uploaded bytes are still there: they are deleted when the
job ends. The encoded objects are stored as artefacts of the job with the results' TTL
(``service.jobs.store``), so every GET answers the same SOP Instance UIDs and the SR references
the very SEG that ``seg.dcm`` returns. Building per request from a stored header would mint new
UIDs on every call: a PACS would file each download as another instance, and an SR fetched
apart from its SEG would reference a SEG that nobody holds.

Only DICOM inputs have them: the outputs reference their source instance and copy its Patient
and Study modules. A DICOM input whose outputs cannot be built (no valid UIDs, a geometry
highdicom refuses) keeps its analysis: the reason is stored instead (``dicom_error``, JSON
``{code, message}``) and answered as a problem. Logs name the input index and the error code,
never header values.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from breastdx.errors import BreastdxError
from imaging.record import ImageFormat
from models_registry.registry import Registry
from service.dicom.identity import parse_header, to_bytes
from service.dicom.outputs import build_seg_and_sr
from service.inference.result import Analysis

# The keys are the job store's artefact kinds "seg", "sr" and "dicom_error"
# (``service.jobs.store.ArtefactKind``); the job layer sits above this one and is not imported.
DicomArtefacts = dict[Any, bytes]

logger = logging.getLogger(__name__)


def _build(data: bytes, analysis: Analysis, registry: Registry) -> DicomArtefacts:
    header = parse_header(data)  # pixel data left out
    seg, sr = build_seg_and_sr(header, analysis, registry.card(analysis.result.model.ref))
    if seg is None:  # no lesion: the SR alone; GET seg.dcm answers no_lesion_found
        return {"sr": to_bytes(sr)}
    return {"seg": to_bytes(seg), "sr": to_bytes(sr)}


def _unavailable(index: int, code: str, message: str) -> DicomArtefacts:
    logger.warning("no DICOM outputs for input %d: %s", index, code)
    return {"dicom_error": json.dumps({"code": code, "message": message}).encode()}


def dicom_artefacts(
    inputs: Sequence[bytes], analyses: Sequence[Analysis], registry: Registry
) -> list[DicomArtefacts]:
    """Per input: ``seg`` and ``sr`` of a DICOM input (``sr`` alone when no lesion was found),
    ``dicom_error`` when they could not be built, nothing for other formats. Never raises for
    one input: the analysis stands."""
    found: list[DicomArtefacts] = []
    for index, (data, analysis) in enumerate(zip(inputs, analyses, strict=True)):
        if analysis.result.input.format is not ImageFormat.DICOM:
            found.append({})
            continue
        try:
            found.append(_build(data, analysis, registry))
        except BreastdxError as exc:  # messages carry no identifiers (breastdx.errors)
            found.append(_unavailable(index, exc.code, exc.message))
        except Exception as exc:  # highdicom refused the source; its message may quote it
            name = type(exc).__name__
            message = f"an unexpected {name} stopped building them from the source header"
            found.append(_unavailable(index, name, message))
    return found
