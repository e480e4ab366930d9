"""Which DICOM objects hold an image to analyse: decided by SOP Class, not by Pixel Data.

Policy: refuse a known list of non-image SOP classes, accept everything else that carries Pixel
Data. Some refused objects DO carry Pixel Data (Segmentation, Parametric Map, RT Dose), but their
values are labels or measurements, not an acquired image, so analysing them would be wrong. A
refuse list is used rather than an accept list so that new or private image SOP classes (e.g.
vendor-specific mammography objects) still decode; every standard storage family that is not an
image is listed (PS3.4 Annex B.5, PS3.6 Annex A). The Modality is checked as a second line, for
objects whose SOP Class is private but whose Modality says what they are.
"""

from __future__ import annotations

from pydicom.uid import UID

from imaging.errors import NotAnImageError

_STORAGE = "1.2.840.10008.5.1.4.1.1."

# UID prefix (ending with a dot) -> what the family holds.
NON_IMAGE_FAMILIES: dict[str, str] = {
    _STORAGE + "9.": "waveform",
    _STORAGE + "11.": "presentation state",
    _STORAGE + "66.": "segmentation, registration or fiducials",
    _STORAGE + "68.": "surface scan",
    _STORAGE + "78.": "ophthalmic measurement",
    _STORAGE + "88.": "structured report or key object selection",
    _STORAGE + "91.": "annotation",
    _STORAGE + "104.": "encapsulated document",
    _STORAGE + "200.": "protocol",
    _STORAGE + "201.": "inventory",
    _STORAGE + "481.": "radiotherapy object",  # except RT Image, 481.1 (accepted below)
    "1.2.840.10008.5.1.4.34.": "radiotherapy object",
    "1.2.840.10008.5.1.4.38.": "hanging protocol",
    "1.2.840.10008.5.1.4.39.": "colour palette",
    "1.2.840.10008.5.1.4.43.": "implant template",
    "1.2.840.10008.5.1.4.44.": "implant assembly template",
    "1.2.840.10008.5.1.4.45.": "implant template group",
}

# Single SOP classes outside those families; names for the ones pydicom 3.0 may not know.
NON_IMAGE_CLASSES: dict[str, str] = {
    _STORAGE + "30": "Parametric Map Storage",
    _STORAGE + "66": "Raw Data Storage",
    _STORAGE + "66.7": "Label Map Segmentation Storage",
    _STORAGE + "67": "Real World Value Mapping Storage",
    _STORAGE + "4.2": "MR Spectroscopy Storage",
    _STORAGE + "79.1": "Macular Grid Thickness and Volume Report Storage",
    _STORAGE + "80.1": "Ophthalmic Visual Field Static Perimetry Measurements Storage",
    _STORAGE + "81.1": "Ophthalmic Thickness Map Storage",
    _STORAGE + "82.1": "Corneal Topography Map Storage",
    _STORAGE + "90.1": "Content Assessment Results Storage",
    _STORAGE + "131": "Basic Structured Display Storage",
    _STORAGE + "77.1.5.8": "Ophthalmic Optical Coherence Tomography B-scan Volume Analysis Storage",
}

IMAGE_EXCEPTIONS = frozenset({_STORAGE + "481.1"})  # RT Image Storage

NON_IMAGE_MODALITIES = frozenset(
    {"SEG", "SR", "KO", "PR", "ANN", "REG", "FID", "RWV", "DOC", "PLAN", "RTDOSE", "RTSTRUCT"}
    | {"RTPLAN", "RTRECORD", "RTSEGANN", "AU", "ECG", "HD", "EPS", "RESP", "M3D"}
)


def sop_class_name(sop_class_uid: str | None) -> str:
    """A readable name for a SOP Class UID: pydicom's, ours, or the UID itself."""
    if not sop_class_uid:
        return "unknown SOP class"
    if sop_class_uid in NON_IMAGE_CLASSES:
        return NON_IMAGE_CLASSES[sop_class_uid]
    name = UID(sop_class_uid).name
    return name if name and name != sop_class_uid else sop_class_uid


def sop_class_keyword(sop_class_uid: str | None) -> str | None:
    """pydicom's keyword (``CTImageStorage``), else the UID; None when absent."""
    if not sop_class_uid:
        return None
    keyword = UID(sop_class_uid).keyword
    return keyword or sop_class_uid


def non_image_reason(sop_class_uid: str | None, modality: str | None) -> str | None:
    """Why the object is not an image to analyse, or None when it may be one."""
    uid = sop_class_uid or ""
    if uid in IMAGE_EXCEPTIONS:
        return None
    if uid in NON_IMAGE_CLASSES:
        return NON_IMAGE_CLASSES[uid]
    for prefix, family in NON_IMAGE_FAMILIES.items():
        if uid.startswith(prefix):
            return family
    if modality and modality.upper() in NON_IMAGE_MODALITIES:
        return f"modality {modality.upper()}"
    return None


def check_image_sop_class(sop_class_uid: str | None, modality: str | None) -> None:
    """Raise ``NotAnImageError`` for a SOP class (or modality) that holds no image to analyse."""
    reason = non_image_reason(sop_class_uid, modality)
    if reason is None:
        return
    name = sop_class_name(sop_class_uid)
    detail = f" ({reason})" if reason != name else ""
    raise NotAnImageError(
        f"The DICOM object is a {name}{detail}, not an image that can be analysed.",
        sop_class=name,
    )
