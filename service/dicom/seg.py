"""The lesion mask as a binary DICOM Segmentation (PS3.3 A.51, C.8.20), built with highdicom.

One segment, "Lesion" (category SCT 49755003 "Morphologically abnormal structure", type SCT
52988006 "Lesion", anatomic region SCT 76752008 "Breast"), AUTOMATIC, with the model card's name,
version and family (DCM 123110 "Artificial Intelligence") as Segment Algorithm Identification.
The SEG holds the whole mask of the analysed frame; it is built only when a lesion was found
(``outputs.has_finding``: an all-empty "Lesion" segment would claim one). It carries the
source's Body Part Examined and Patient Orientation, and the side as Anatomic Region Modifier of
the segment's region (the SEG IOD has no series Laterality).

Tiled slide microscopy keeps its Frame of Reference: the SEG frame gets the analysed tile's plane
position. Every other source (projection radiographs, ultrasound, secondary capture) is a planar
image: the SEG is built against a single-frame, geometry-free view of the header (highdicom 0.28
builds SEGs of multi-frame sources without a Frame of Reference from single frames only), then
its source references are pointed back at the real SOP Class and, for a multi-frame source, the
analysed frame (Referenced Frame Number, PS3.3 C.7.6.16.2.6 and 10.3).
"""

from __future__ import annotations

import copy
from typing import Any, Final, cast

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from service.dicom.identity import (
    MODEL_NAME,
    Producer,
    Source,
    code_item,
    copy_anatomy,
    mark_ai_generated,
    reference_header,
    source_image_item,
    source_laterality,
)
from service.dicom.routing import CONTENT_LABEL, MANUFACTURER

SEG_SERIES_NUMBER: Final = 9801
SEGMENT_LABEL: Final = "Lesion"


def segment_description(producer: Producer) -> hd.seg.SegmentDescription:
    """Segment 1, "Lesion", with the model as its algorithm."""
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=producer.segment_algorithm(),
        anatomic_regions=[codes.SCT.Breast],
    )


def _segment_side(seg: Dataset, header: Dataset) -> None:
    """The source's side as Anatomic Region Modifier (SCT Left / Right, CID 2) of the segment's
    region, Breast: the SEG IOD has no place for a series Laterality (dciodvfy refuses it)."""
    side = source_laterality(header)
    if side is None:
        return
    modifier = code_item(codes.SCT.Left if side == "L" else codes.SCT.Right)
    for segment in seg.SegmentSequence:
        for region in segment.get("AnatomicRegionSequence", []):
            region.AnatomicRegionModifierSequence = [modifier]


def _is_tiled(header: Dataset) -> bool:
    return "FrameOfReferenceUID" in header and "TotalPixelMatrixRows" in header


def _planar_view(header: Dataset) -> Dataset:
    """The header as highdicom's geometry-free case: a single-frame image, no Frame of Reference.

    highdicom 0.28 writes Pixel Measures without Slice Thickness for such sources but cannot
    read that back, so Pixel Spacing is left out too: the SEG is aligned with its source pixel
    for pixel through its derivation references, and the SR carries the areas in mm2.
    """
    view = copy.deepcopy(header)
    for keyword in (
        "FrameOfReferenceUID",
        "PositionReferenceIndicator",
        "PixelSpacing",
        "NumberOfFrames",
        "FrameIncrementPointer",
        "PerFrameFunctionalGroupsSequence",
        "SharedFunctionalGroupsSequence",
    ):
        if keyword in view:
            delattr(view, keyword)
    if int(header.get("NumberOfFrames", 1) or 1) > 1 or "SharedFunctionalGroupsSequence" in header:
        is_us = header.SOPClassUID == UltrasoundMultiFrameImageStorage
        view.SOPClassUID = UltrasoundImageStorage if is_us else SecondaryCaptureImageStorage
    return view


def _point_at_frame(node: Dataset, header: Dataset, view_class: str, frame: int) -> None:
    """Every reference to the source: the real SOP Class; under derivation, the frame too."""
    source_uid = str(header.SOPInstanceUID)
    for element in node:
        if element.VR != "SQ":
            continue
        for index, item in enumerate(element.value):
            if str(item.get("ReferencedSOPInstanceUID", "")) == source_uid:
                if str(item.get("ReferencedSOPClassUID", "")) == view_class:
                    item.ReferencedSOPClassUID = header.SOPClassUID
                if element.keyword == "SourceImageSequence":
                    # highdicom shares this item with Referenced Series Sequence, where a
                    # frame number is not part of the IOD: the frame goes on a copy
                    item = element.value[index] = copy.deepcopy(item)
                    item.ReferencedFrameNumber = frame
            _point_at_frame(item, header, view_class, frame)


def _derive_from_frame(seg: Dataset, source: Source) -> None:
    """Derivation Image (PS3.3 C.7.6.16.2.6) of each SEG frame: the analysed source tile.

    highdicom leaves it empty when plane positions are given; readers map SEG frames to source
    frames through it.
    """
    for item in seg.PerFrameFunctionalGroupsSequence:
        derivation = Dataset()
        derivation.DerivationCodeSequence = [code_item(codes.DCM.Segmentation)]
        reference = source_image_item(source, with_frame=True)
        reference.SpatialLocationsPreserved = "YES"  # the mask is the tile, pixel for pixel
        derivation.SourceImageSequence = [reference]
        item.DerivationImageSequence = [derivation]


def build_seg(source: Source, mask: np.ndarray, producer: Producer) -> hd.seg.Segmentation:
    """A binary SEG of ``mask`` ``(H, W)`` (non-zero = lesion) over the analysed frame.

    Raises:
        ValueError: the mask does not have the source's rows and columns (highdicom's message).
    """
    header = reference_header(source.header)
    binary = (np.asarray(mask) > 0).astype(np.uint8)  # (H, W)
    expected = (int(header.Rows), int(header.Columns))
    if binary.shape != expected:
        raise ValueError(f"a {binary.shape} mask does not fit a {expected} source frame")
    options: dict[str, Any] = {}
    view = header
    if _is_tiled(header):
        positions = hd.utils.compute_plane_position_slide_per_frame(header)
        options["plane_positions"] = [positions[source.frame_number - 1]]
        binary = binary[None]  # (1, H, W)
    else:
        view = _planar_view(header)
    seg = hd.seg.Segmentation(
        source_images=[view],
        pixel_array=binary,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_description(producer)],
        series_instance_uid=generate_uid(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=cast(Any, list(producer.software_versions)),
        device_serial_number=producer.serial_number,
        content_description=f"Lesion mask by AI model {producer.ref}; not for clinical use"[:64],
        content_creator_name=f"{CONTENT_LABEL}^",
        content_label=CONTENT_LABEL,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        omit_empty_frames=False,
        contributing_equipment=[producer.equipment()],
        **options,
    )
    if _is_tiled(header):
        _derive_from_frame(seg, source)
    elif view.SOPClassUID != header.SOPClassUID:
        _point_at_frame(seg, header, str(view.SOPClassUID), source.frame_number)
    copy_anatomy(seg, header, series_laterality=False)
    _segment_side(seg, header)
    mark_ai_generated(seg, producer, "lesion SEG")
    return seg
