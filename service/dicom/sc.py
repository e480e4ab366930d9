"""The overlay picture as a Secondary Capture image (PS3.3 A.8.1), for viewers without SEG support.

The RGB overlay (mask tint and outlines, or the histopathology heatmap) at the source frame's
geometry, built with ``highdicom.sc.SCImage.from_ref_dataset`` (which copies the Patient and Study
modules). The source is named in Source Image Sequence (0008,2112) with purpose DCM 121322
"Source image for image processing operation" and the analysed frame where it has several.
"""

from __future__ import annotations

from typing import Any, Final, cast

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from service.dicom.identity import (
    MODEL_NAME,
    Producer,
    Source,
    copy_anatomy,
    mark_ai_generated,
    reference_header,
    source_image_item,
)
from service.dicom.routing import MANUFACTURER
from service.inference.result import AnalysisResult

SC_SERIES_NUMBER: Final = 9803
_PLACEHOLDER_ORIENTATION: Final = ("L", "F")  # replaced by the source's value after construction


def _coordinates(header: Dataset) -> dict[str, Any]:
    """SLIDE where the source has a Specimen module, else PATIENT (orientation fixed later)."""
    if "ContainerIdentifier" in header and header.get("SpecimenDescriptionSequence"):
        return {
            "coordinate_system": hd.CoordinateSystemNames.SLIDE,
            "container_identifier": str(header.ContainerIdentifier),
            "specimen_descriptions": list(header.SpecimenDescriptionSequence),
        }
    return {
        "coordinate_system": hd.CoordinateSystemNames.PATIENT,
        "patient_orientation": _PLACEHOLDER_ORIENTATION,
    }


def build_sc(
    source: Source, overlay: np.ndarray, result: AnalysisResult, producer: Producer
) -> hd.sc.SCImage:
    """An 8-bit RGB Secondary Capture of ``overlay`` ``(H, W, 3)``."""
    header = reference_header(source.header)
    pixels = np.ascontiguousarray(overlay, dtype=np.uint8)  # (H, W, 3)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"the overlay must be (H, W, 3) RGB, not {pixels.shape}")
    coordinates = _coordinates(header)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        series_instance_uid=generate_uid(),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        pixel_spacing=cast(Any, result.input.pixel_spacing_mm),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[producer.equipment()],
        manufacturer_model_name=MODEL_NAME,
        software_versions=cast(Any, list(producer.software_versions)),
        device_serial_number=producer.serial_number,
        **coordinates,
    )
    # Laterality belongs to patient images; a slide's SC has none (dciodvfy refuses it)
    copy_anatomy(sc, header, series_laterality="patient_orientation" in coordinates)
    sc.SourceImageSequence = [source_image_item(source)]
    sc.DerivationDescription = f"Lesion overlay by AI model {producer.ref}"[:1024]
    mark_ai_generated(sc, producer, "overlay")
    return sc
