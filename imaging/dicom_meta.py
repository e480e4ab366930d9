"""Read acquisition facts from a DICOM dataset: spacing, laterality, view, VOI, rescale, UIDs.

Every reader is defensive: a missing, empty or malformed attribute gives "unknown" (and a log
line naming the attribute, never its value), not an exception. Patient-level attributes are
never touched.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from imaging.record import (
    DicomIdentifiers,
    Laterality,
    PixelSpacingSource,
    ViewPosition,
    VoiLut,
    Window,
)

logger = logging.getLogger(__name__)

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_MAX_SPACING_MM = 1000.0
_VOI_FUNCTIONS = frozenset({"LINEAR", "LINEAR_EXACT", "SIGMOID"})

# CID 4014 "View for Mammography": SNOMED CT codes and their legacy SNOMED RT (SRT) equivalents.
VIEW_CODES: dict[str, ViewPosition] = {
    "399162004": ViewPosition.CC,
    "R-10242": ViewPosition.CC,
    "399368009": ViewPosition.MLO,
    "R-10226": ViewPosition.MLO,
    "399260004": ViewPosition.ML,
    "R-10224": ViewPosition.ML,
    "399352003": ViewPosition.LM,
    "R-10228": ViewPosition.LM,
    "399099002": ViewPosition.LMO,
    "R-10230": ViewPosition.LMO,
    "399192008": ViewPosition.XCCL,
    "R-1024A": ViewPosition.XCCL,
    "399101009": ViewPosition.XCCM,
    "R-1024B": ViewPosition.XCCM,
    "399196006": ViewPosition.FB,  # caudo-cranial, "from below"
    "R-10244": ViewPosition.FB,
    "399188001": ViewPosition.SIO,
    "R-102D0": ViewPosition.SIO,
}
_VIEW_NAMES = {view.value: view for view in ViewPosition} | {"FROM BELOW": ViewPosition.FB}
_LATERALITY = {side.value: side for side in Laterality}  # L, R, B, U


def get(ds: Dataset, keyword: str) -> Any:
    """The value of ``keyword``, or None when absent, empty or unparsable."""
    try:
        value = ds.get(keyword)
    except Exception:  # pydicom converts values lazily and may raise on malformed ones
        logger.warning("ignoring an unparsable value of %s", keyword)
        return None
    if value is None or (isinstance(value, str | bytes | list) and len(value) == 0):
        return None
    return value


def floats(value: Any, count: int) -> tuple[float, ...] | None:
    """The first ``count`` values as finite floats, or None."""
    if value is None:
        return None
    values = list(value) if isinstance(value, Iterable) and not isinstance(value, str) else [value]
    try:
        result = tuple(float(v) for v in values[:count])
    except (TypeError, ValueError):
        return None
    if len(result) < count or not all(math.isfinite(v) for v in result):
        return None
    return result


def items(ds: Dataset | None, keyword: str) -> list[Dataset]:
    """The items of sequence ``keyword`` (empty when absent or not a sequence)."""
    if ds is None:
        return []
    value = get(ds, keyword)
    try:
        return [item for item in value if isinstance(item, Dataset)] if value else []
    except TypeError:
        return []


def functional_group(ds: Dataset, macro: str) -> list[Dataset]:
    """The first item of ``macro`` in the shared, then the first per-frame, functional group."""
    found: list[Dataset] = []
    for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for container in items(ds, group)[:1]:
            found.extend(items(container, macro)[:1])
    return found


def _spacing(value: Any) -> tuple[float, float] | None:
    pair = floats(value, 2)
    if pair is None or not all(0.0 < v < _MAX_SPACING_MM for v in pair):
        return None
    return (pair[0], pair[1])


def _from_imager_spacing(ds: Dataset) -> tuple[float, float] | None:
    """Imager Pixel Spacing, at the detector; for MG divided by the Estimated Radiographic
    Magnification Factor (PS3.3 C.8.11.7.1.1) to give the spacing at the breast."""
    spacing = _spacing(get(ds, "ImagerPixelSpacing"))
    factor = floats(get(ds, "EstimatedRadiographicMagnificationFactor"), 1)
    if spacing is None or str(get(ds, "Modality") or "").upper() != "MG" or factor is None:
        return spacing
    if not 0.5 <= factor[0] <= 10.0:
        logger.warning("ignoring an implausible Estimated Radiographic Magnification Factor")
        return spacing
    return (spacing[0] / factor[0], spacing[1] / factor[0])


def _from_ultrasound_regions(ds: Dataset) -> tuple[float, float] | None:
    """The first region calibrated in cm (PhysicalUnits 3): PhysicalDelta x 10 mm."""
    for region in items(ds, "SequenceOfUltrasoundRegions"):
        units = (get(region, "PhysicalUnitsXDirection"), get(region, "PhysicalUnitsYDirection"))
        if units != (3, 3):
            continue
        deltas = floats([get(region, "PhysicalDeltaY"), get(region, "PhysicalDeltaX")], 2)
        spacing = _spacing([abs(v) * 10.0 for v in deltas]) if deltas else None
        if spacing:
            return spacing
    return None


def _from_pixel_measures(ds: Dataset) -> tuple[float, float] | None:
    for measures in functional_group(ds, "PixelMeasuresSequence"):
        spacing = _spacing(get(measures, "PixelSpacing"))
        if spacing:
            return spacing
    return None


def _from_total_pixel_matrix(ds: Dataset) -> tuple[float, float] | None:
    """Slide microscopy: Imaged Volume Height/Width (mm) over Total Pixel Matrix Rows/Columns."""
    size = floats([get(ds, "ImagedVolumeHeight"), get(ds, "ImagedVolumeWidth")], 2)
    matrix = floats([get(ds, "TotalPixelMatrixRows"), get(ds, "TotalPixelMatrixColumns")], 2)
    if size is None or matrix is None or min(matrix) <= 0:
        return None
    return _spacing([size[0] / matrix[0], size[1] / matrix[1]])


_SpacingReader = Callable[[Dataset], tuple[float, float] | None]
_SPACING_READERS: tuple[tuple[_SpacingReader, PixelSpacingSource], ...] = (
    (lambda ds: _spacing(get(ds, "PixelSpacing")), PixelSpacingSource.PIXEL_SPACING),
    (_from_imager_spacing, PixelSpacingSource.IMAGER_PIXEL_SPACING),
    (
        lambda ds: _spacing(get(ds, "NominalScannedPixelSpacing")),
        PixelSpacingSource.NOMINAL_SCANNED_PIXEL_SPACING,
    ),
    (_from_ultrasound_regions, PixelSpacingSource.ULTRASOUND_REGION),
    (_from_pixel_measures, PixelSpacingSource.PIXEL_MEASURES),
    (_from_total_pixel_matrix, PixelSpacingSource.TOTAL_PIXEL_MATRIX),
)


def read_pixel_spacing(ds: Dataset) -> tuple[tuple[float, float] | None, PixelSpacingSource]:
    """(row, column) spacing in mm and where it came from, first usable source wins.

    Order: Pixel Spacing; Imager Pixel Spacing (MG: corrected by the Estimated Radiographic
    Magnification Factor); Nominal Scanned Pixel Spacing; the ultrasound region calibration;
    the Pixel Measures functional group; slide microscopy Imaged Volume / Total Pixel Matrix.
    """
    for reader, source in _SPACING_READERS:
        spacing = reader(ds)
        if spacing is not None:
            return spacing, source
    return None, PixelSpacingSource.UNKNOWN


def read_laterality(ds: Dataset) -> Laterality:
    """Image Laterality, else Laterality, else Frame Laterality of the Frame Anatomy group."""
    candidates = [get(ds, "ImageLaterality"), get(ds, "Laterality")]
    candidates += [
        get(item, "FrameLaterality") for item in functional_group(ds, "FrameAnatomySequence")
    ]
    for value in candidates:
        laterality = _LATERALITY.get(str(value or "").strip().upper())
        if laterality is not None and laterality is not Laterality.UNKNOWN:
            return laterality
    return Laterality.UNKNOWN


def _view_from_text(text: str) -> ViewPosition:
    text = text.strip().upper()
    if text in _VIEW_NAMES:
        return _VIEW_NAMES[text]
    if len(text) > 2 and text[0] in "LR" and text[1:] in _VIEW_NAMES:  # "RCC", "LMLO"
        return _VIEW_NAMES[text[1:]]
    return ViewPosition.OTHER


def read_view_position(ds: Dataset) -> ViewPosition:
    """View Position, else the View Code Sequence (CID 4014); unmapped views are OTHER."""
    text = get(ds, "ViewPosition")
    if isinstance(text, str) and text.strip():
        return _view_from_text(text)
    codes = items(ds, "ViewCodeSequence")
    if not codes:
        return ViewPosition.UNKNOWN
    value = str(get(codes[0], "CodeValue") or "").strip()
    return VIEW_CODES.get(value, ViewPosition.OTHER)


# Anatomic Region Sequence codes of the breast: SNOMED CT and the retired SNOMED RT (SRT).
BREAST_REGION_CODES = frozenset({"76752008", "T-04000"})


def read_body_part(ds: Dataset) -> str | None:
    """Body Part Examined (0018,0015) upper-cased, else BREAST for a breast Anatomic Region
    Sequence code, else that region's Code Meaning upper-cased; None when neither says."""
    text = get(ds, "BodyPartExamined")
    if isinstance(text, str) and text.strip():
        return text.strip().upper()[:64]
    regions = items(ds, "AnatomicRegionSequence")
    if not regions:
        return None
    if str(get(regions[0], "CodeValue") or "").strip() in BREAST_REGION_CODES:
        return "BREAST"
    meaning = str(get(regions[0], "CodeMeaning") or "").strip().upper()
    return meaning[:64] or None


def clean_uid(value: Any) -> str | None:
    """A syntactically valid UID (digits and dots, at most 64), else None."""
    text = str(value).strip().rstrip("\x00").strip() if value is not None else ""
    if not text:
        return None
    if len(text) > 64 or not _UID_RE.match(text):
        logger.warning("ignoring a malformed UID")
        return None
    return text


def read_identifiers(ds: Dataset, transfer_syntax_uid: str | None) -> DicomIdentifiers:
    """Study, series, instance and SOP class UIDs; nothing about the patient."""
    return DicomIdentifiers(
        study_instance_uid=clean_uid(get(ds, "StudyInstanceUID")),
        series_instance_uid=clean_uid(get(ds, "SeriesInstanceUID")),
        sop_instance_uid=clean_uid(get(ds, "SOPInstanceUID")),
        sop_class_uid=clean_uid(get(ds, "SOPClassUID")),
        transfer_syntax_uid=clean_uid(transfer_syntax_uid),
    )


def read_rescale(ds: Dataset) -> tuple[float, float]:
    """Rescale Slope and Intercept, top level or Pixel Value Transformation group; (1, 0)."""
    for source in (ds, *functional_group(ds, "PixelValueTransformationSequence")):
        slope = floats(get(source, "RescaleSlope"), 1)
        intercept = floats(get(source, "RescaleIntercept"), 1)
        if slope is not None or intercept is not None:
            if slope is not None and slope[0] == 0.0:
                logger.warning("ignoring a Rescale Slope of 0")
                slope = None
            return (slope[0] if slope else 1.0, intercept[0] if intercept else 0.0)
    return 1.0, 0.0


def _lut_table(item: Dataset, entries: int, little_endian: bool) -> np.ndarray | None:
    data = get(item, "LUTData")
    if data is None:
        return None
    if isinstance(data, bytes | bytearray):
        if len(data) == entries:  # 8-bit entries packed into OW (seen in old files)
            table = np.frombuffer(data, dtype=np.uint8)
        else:
            table = np.frombuffer(
                data[: len(data) // 2 * 2], dtype="<u2" if little_endian else ">u2"
            )
    else:
        table = np.asarray(list(data) if isinstance(data, Iterable) else [data], dtype=np.int64)
    if table.size == 0:
        return None
    return np.clip(table[:entries], 0, 65535).astype(np.uint16)


def _read_voi_lut(item: Dataset, pixel_representation: int, little_endian: bool) -> VoiLut | None:
    descriptor = get(item, "LUTDescriptor")
    if isinstance(descriptor, bytes | bytearray) and len(descriptor) == 6:
        descriptor = list(np.frombuffer(descriptor, dtype="<u2" if little_endian else ">u2"))
    values = floats(descriptor, 3)
    if values is None:
        return None
    entries, first, bits = (int(v) for v in values)
    entries = entries or 65536
    if pixel_representation == 1 and first >= 32768:
        first -= 65536  # SS value read as US
    if not 1 <= bits <= 16:
        logger.warning("ignoring a VOI LUT with %d bits per entry", bits)
        return None
    table = _lut_table(item, entries, little_endian)
    if table is None:
        return None
    return VoiLut(first_mapped=first, bits=bits, table=table)


def _read_window(source: Dataset) -> Window | None:
    center = floats(get(source, "WindowCenter"), 1)
    width = floats(get(source, "WindowWidth"), 1)
    if center is None or width is None:
        return None
    if width[0] <= 0:
        logger.warning("ignoring a window with a width of %s", width[0])
        return None
    function = str(get(source, "VOILUTFunction") or "LINEAR").strip().upper()
    if function not in _VOI_FUNCTIONS:
        logger.warning("unknown VOI LUT Function, using LINEAR")
        function = "LINEAR"
    return Window(center=center[0], width=width[0], function=function)


def read_voi(ds: Dataset, pixel_representation: int, little_endian: bool) -> Window | VoiLut | None:
    """The first VOI LUT Sequence item, else the first window (top level, then Frame VOI LUT)."""
    for item in items(ds, "VOILUTSequence")[:1]:
        lut = _read_voi_lut(item, pixel_representation, little_endian)
        if lut is not None:
            return lut
        logger.warning("ignoring an unusable VOI LUT Sequence item")
    for source in (ds, *functional_group(ds, "FrameVOILUTSequence")):
        window = _read_window(source)
        if window is not None:
            return window
    return None
