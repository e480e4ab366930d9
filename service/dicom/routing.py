"""Which stage analyses a received DICOM instance: decided by SOP Class, Modality and a few tags.

Rules, in order (each refusal states the rule it applies):

1. Objects without an image (SR, SEG, KO, PR, ... by SOP Class or Modality, see
   ``imaging.dicom_sop``) and objects breastdx made itself (Manufacturer ``breastdx``, or
   Content Label ``BREASTDX``: analysing our own results would loop) are refused.
2. Body Part Examined (0018,0015) or the Anatomic Region Sequence, where present, must be the
   breast (``imaging.dicom_meta.read_body_part``, the reader the stage checks use too).
3. Digital Mammography X-Ray (For Presentation, For Processing) -> mammography.
4. Digital X-Ray and Computed Radiography -> mammography only when the image says it is one:
   Modality MG, Body Part Examined BREAST or a mammography view (View Position or View Code
   Sequence, PS3.16 CID 4014); a chest film is refused.
5. Ultrasound Image and Ultrasound Multi-frame Image -> ultrasound.
6. VL Whole Slide Microscopy -> histopathology for VOLUME (and un-typed) images; LABEL, OVERVIEW
   and THUMBNAIL images are refused (a label photograph, not tissue at analysable resolution);
   VL Microscopic and VL Slide-Coordinates Microscopic -> histopathology. Colour required.
7. Secondary Capture (single frame, multi-frame true colour) -> histopathology when it is a
   pathology tile: colour, and Modality SM, GM or XC or a Specimen module (Container Identifier
   or Specimen Description Sequence); -> mammography when it is a digitised film: greyscale,
   any Modality (RG, OT, ...), with breast anatomy or a mammography view. Any other secondary
   capture is refused.
8. Every other SOP Class is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from pydicom.dataset import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    VLMicroscopicImageStorage,
    VLSlideCoordinatesMicroscopicImageStorage,
    VLWholeSlideMicroscopyImageStorage,
)

from breastdx.errors import BreastdxError
from imaging.dicom import clean_code
from imaging.dicom_meta import read_body_part, read_view_position
from imaging.dicom_sop import non_image_reason, sop_class_name
from imaging.record import ViewPosition
from models_registry.card import Stage

MANUFACTURER: Final = "breastdx"  # what our own outputs carry in Manufacturer (0008,0070)
CONTENT_LABEL: Final = "BREASTDX"  # and in Content Label (0070,0080)

MAMMOGRAPHY_CLASSES: Final = (
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
)
RADIOGRAPHY_CLASSES: Final = (
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ComputedRadiographyImageStorage,
)
ULTRASOUND_CLASSES: Final = (UltrasoundImageStorage, UltrasoundMultiFrameImageStorage)
MICROSCOPY_CLASSES: Final = (
    VLWholeSlideMicroscopyImageStorage,
    VLMicroscopicImageStorage,
    VLSlideCoordinatesMicroscopicImageStorage,
)
SECONDARY_CAPTURE_CLASSES: Final = (
    SecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
)
# Every storage SOP Class the listener accepts (PS3.4 Annex B.5).
STORAGE_SOP_CLASSES: Final = (
    *MAMMOGRAPHY_CLASSES,
    *RADIOGRAPHY_CLASSES,
    *ULTRASOUND_CLASSES,
    *MICROSCOPY_CLASSES,
    *SECONDARY_CAPTURE_CLASSES,
)
# View Position (0018,5101) values of mammography views (PS3.16 CID 4014, PS3.3 C.8.11.7).
MAMMOGRAPHY_VIEWS: Final = frozenset(v.value for v in ViewPosition) - {"OTHER", "UNKNOWN"}
PATHOLOGY_MODALITIES: Final = frozenset({"SM", "GM", "XC"})
REFUSED_WSI_FLAVOURS: Final = frozenset({"LABEL", "OVERVIEW", "THUMBNAIL"})


class UnroutableError(BreastdxError):
    """The instance is not an image any breastdx stage analyses."""

    code = "unroutable"
    title = "No stage analyses this DICOM instance"
    http_status = 422


@dataclass(frozen=True)
class Route:
    """Where an instance goes and why (the reason is safe to log: no identifiers)."""

    stage: Stage
    reason: str


def _text(ds: Dataset, keyword: str) -> str:
    """An attribute as upper-case printable code string ("" when absent)."""
    value: Any = ds.get(keyword)
    if value is None:
        return ""
    if not isinstance(value, str | bytes) and hasattr(value, "__len__"):
        value = "\\".join(str(v) for v in value)
    return clean_code(value, limit=64)


def _refuse(rule: str, ds: Dataset) -> UnroutableError:
    name = sop_class_name(str(ds.get("SOPClassUID", "") or "") or None)
    return UnroutableError(rule, sop_class=name, modality=_text(ds, "Modality") or None)


def _made_by_breastdx(ds: Dataset) -> bool:
    manufacturer = str(ds.get("Manufacturer", "") or "").strip().lower()
    return manufacturer == MANUFACTURER or _text(ds, "ContentLabel") == CONTENT_LABEL


def _is_colour(ds: Dataset) -> bool:
    try:
        return int(ds.get("SamplesPerPixel", 1) or 1) == 3
    except (TypeError, ValueError):
        return False


def _image_flavour(ds: Dataset) -> str:
    """The third value of Image Type (0008,0008): VOLUME, LABEL, ... for slide microscopy."""
    value = ds.get("ImageType")
    if value is None:
        return ""
    values = [value] if isinstance(value, str) else [str(v) for v in value]
    return clean_code(values[2]) if len(values) > 2 else ""


def _microscopy(ds: Dataset, sop: str) -> Route:
    flavour = _image_flavour(ds)
    if sop == VLWholeSlideMicroscopyImageStorage and flavour in REFUSED_WSI_FLAVOURS:
        raise _refuse(
            f"a whole-slide {flavour} image is not analysed: only VOLUME images hold tissue "
            "at the resolution the histopathology model reads",
            ds,
        )
    if not _is_colour(ds):
        raise _refuse("histopathology reads H&E-stained colour slides; this image is grey", ds)
    return Route(Stage.HISTOPATHOLOGY, f"{sop_class_name(sop)} {flavour or 'image'}".strip())


def _breast_anatomy(ds: Dataset) -> bool:
    return read_body_part(ds) == "BREAST" or read_view_position(ds).value in MAMMOGRAPHY_VIEWS


def _secondary_capture(ds: Dataset) -> Route:
    modality = _text(ds, "Modality")
    specimen = "ContainerIdentifier" in ds or "SpecimenDescriptionSequence" in ds
    if (modality in PATHOLOGY_MODALITIES or specimen) and _is_colour(ds):
        why = f"modality {modality}" if modality in PATHOLOGY_MODALITIES else "specimen module"
        return Route(Stage.HISTOPATHOLOGY, f"secondary capture pathology tile ({why})")
    if not _is_colour(ds) and _breast_anatomy(ds):
        return Route(Stage.MAMMOGRAPHY, "secondary capture of the breast (digitised film)")
    raise _refuse(
        "a secondary capture is analysed as a pathology tile (a colour image with Modality SM, "
        "GM or XC or a Specimen module) or as a digitised film mammogram (greyscale, Body Part "
        "Examined BREAST or a mammography view)",
        ds,
    )


def _radiograph(ds: Dataset, sop: str) -> Route:
    modality = _text(ds, "Modality")
    if modality == "MG" or _breast_anatomy(ds):
        return Route(Stage.MAMMOGRAPHY, f"{sop_class_name(sop)} of the breast")
    raise _refuse(
        f"a {modality or 'radiography'} image is analysed only as a mammogram: Modality MG, "
        "Body Part Examined BREAST or a mammography View Position (CC, MLO, ...)",
        ds,
    )


def route(ds: Dataset) -> Route:
    """The stage that analyses ``ds`` (a header is enough: pixel data are not read).

    Raises:
        UnroutableError: no stage analyses this instance; the message states the rule.
    """
    sop = str(ds.get("SOPClassUID", "") or "").strip()
    if not sop:
        raise _refuse("the instance has no SOP Class UID (0008,0016)", ds)
    reason = non_image_reason(sop, _text(ds, "Modality") or None)
    if reason is not None:
        raise _refuse(f"not an image but a {reason}", ds)
    if _made_by_breastdx(ds):
        raise _refuse("the instance is a breastdx result; analysing it again would loop", ds)
    body_part = read_body_part(ds)
    if body_part and body_part != "BREAST":
        raise _refuse(f"Body Part Examined is {body_part}; breastdx analyses the breast", ds)
    if sop in MAMMOGRAPHY_CLASSES:
        return Route(Stage.MAMMOGRAPHY, sop_class_name(sop))
    if sop in RADIOGRAPHY_CLASSES:
        return _radiograph(ds, sop)
    if sop in ULTRASOUND_CLASSES:
        return Route(Stage.ULTRASOUND, sop_class_name(sop))
    if sop in MICROSCOPY_CLASSES:
        return _microscopy(ds, sop)
    if sop in SECONDARY_CAPTURE_CLASSES:
        return _secondary_capture(ds)
    raise _refuse(
        f"{sop_class_name(sop)} is not analysed; breastdx takes mammograms (MG, DX, CR), "
        "breast ultrasound (US) and pathology (SM, secondary-capture tiles)",
        ds,
    )
