"""The findings as a Comprehensive SR, TID 1500 "Measurement Report" (PS3.16), by highdicom.

Content tree (device observer: the model, TID 1004; procedure: SCT Mammography, Ultrasonography
of breast or Histopathology):

- one TID 1411 group, "breastdx lesion mask", that references segment 1 of the SEG (DCM 121191)
  with the total lesion Area (SCT 42798000) and the image's Probability of cancer (DCM 111047);
- one TID 1410 group per lesion, "Lesion N", whose region is the lesion's outline as a closed
  SCOORD POLYLINE (first point repeated, PS3.3 C.18.6.1.2) on the source frame, with its Area and
  Probability of cancer.

Areas are in mm2 where the pixel spacing is known, else in UCUM ``{pixels}``. Probability of
cancer is the model's calibrated output in [0, 1] (UCUM ``1``). Segmentation models score the
whole image, so every lesion carries the image's score (method ``99BDX IMAGE_SCORE``); for
histopathology a region's value is the mean of the window probabilities over the region (method
``99BDX REGION_MEAN``).
"""

from __future__ import annotations

from typing import Any, Final, cast

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from imaging.postprocess import Lesion
from imaging.record import Laterality
from models_registry.card import Stage
from service.dicom.identity import MODEL_NAME, Producer, Source, mark_ai_generated, reference_header
from service.dicom.routing import MANUFACTURER
from service.inference.result import AnalysisResult

SR_SERIES_NUMBER: Final = 9802
PIXELS: Final = hd.sr.CodedConcept("{pixels}", "UCUM", "pixels")
IMAGE_SCORE: Final = hd.sr.CodedConcept(
    "IMAGE_SCORE", "99BDX", "Calibrated malignancy output for the whole image"
)
REGION_MEAN: Final = hd.sr.CodedConcept(
    "REGION_MEAN", "99BDX", "Mean window malignancy probability over the region"
)
PROCEDURES: Final = {
    Stage.MAMMOGRAPHY: codes.SCT.Mammography,
    Stage.ULTRASOUND: codes.SCT.UltrasonographyOfBreast,
    Stage.HISTOPATHOLOGY: codes.SCT.Histopathology,
}
LATERALITY: Final = {Laterality.LEFT: codes.SCT.Left, Laterality.RIGHT: codes.SCT.Right}


def _finding_site(result: AnalysisResult) -> hd.sr.FindingSite:
    side = LATERALITY.get(result.input.laterality)
    return hd.sr.FindingSite(anatomic_location=codes.SCT.Breast, laterality=side)


def _area(area_px: int, area_mm2: float | None, producer: Producer) -> hd.sr.Measurement:
    if area_mm2 is not None:
        value, unit = round(float(area_mm2), 4), hd.sr.CodedConcept("mm2", "UCUM", "mm2")
    else:
        value, unit = float(area_px), PIXELS
    return hd.sr.Measurement(
        name=codes.SCT.Area, value=value, unit=unit, algorithm_id=producer.sr_algorithm()
    )


def _probability(value: float, producer: Producer, method: hd.sr.CodedConcept) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=codes.DCM.ProbabilityOfCancer,
        value=round(float(np.clip(value, 0.0, 1.0)), 6),
        unit=codes.UCUM.NoUnits,
        method=method,
        algorithm_id=producer.sr_algorithm(),
    )


def _frames(source: Source) -> list[int] | None:
    return [source.frame_number] if source.frames > 1 else None


def _mask_group(
    source: Source, result: AnalysisResult, producer: Producer, seg: Dataset
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    header = source.header
    segment = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        frame_number=1,
        segment_number=1,
        source_image=hd.sr.SourceImageForSegmentation(
            header.SOPClassUID, header.SOPInstanceUID, _frames(source)
        ),
    )
    measurements = [_area(result.mask.total_area_px, result.mask.total_area_mm2, producer)]
    if result.malignancy is not None:
        measurements.append(_probability(result.malignancy.probability, producer, IMAGE_SCORE))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier="breastdx lesion mask"
        ),
        referenced_segment=segment,
        finding_type=codes.SCT.Lesion,
        finding_category=codes.SCT.MorphologicallyAbnormalStructure,
        algorithm_id=producer.sr_algorithm(),
        finding_sites=[_finding_site(result)],
        measurements=measurements,
    )


def _outline(lesion: Lesion) -> np.ndarray:
    """The closed outline, (N, 2) (column, row) at pixel centres; the bbox for a thin lesion."""
    points = [(x + 0.5, y + 0.5) for x, y in lesion.contour]
    if len({(x, y) for x, y in points}) < 3:
        x, y, w, h = lesion.bbox
        points = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
    points.append(points[0])
    return np.asarray(points, dtype=np.float64)


def _lesion_group(
    source: Source, result: AnalysisResult, producer: Producer, lesion: Lesion
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    header = source.header
    tiled = "TotalPixelMatrixRows" in header
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=_outline(lesion),
        source_image=hd.sr.SourceImageForRegion(
            header.SOPClassUID, header.SOPInstanceUID, _frames(source)
        ),
        pixel_origin_interpretation=hd.sr.PixelOriginInterpretationValues.FRAME if tiled else None,
    )
    measurements = [_area(lesion.area_px, lesion.area_mm2, producer)]
    if result.stage is Stage.HISTOPATHOLOGY:
        measurements.append(_probability(lesion.mean_probability, producer, REGION_MEAN))
    elif result.malignancy is not None:
        measurements.append(_probability(result.malignancy.probability, producer, IMAGE_SCORE))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier=f"Lesion {lesion.id}"
        ),
        referenced_region=region,
        finding_type=codes.SCT.Lesion,
        finding_category=codes.SCT.MorphologicallyAbnormalStructure,
        algorithm_id=producer.sr_algorithm(),
        finding_sites=[_finding_site(result)],
        measurements=measurements,
    )


def build_sr(
    source: Source, result: AnalysisResult, producer: Producer, seg: Dataset
) -> hd.sr.ComprehensiveSR:
    """A TID 1500 Measurement Report on the analysed frame, referencing ``seg`` and the source."""
    header = reference_header(source.header)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=producer.device_uid,
            name=MODEL_NAME,
            manufacturer_name=MANUFACTURER,
            model_name=producer.ref,
            serial_number=producer.serial_number,
        ),
    )
    groups = [_mask_group(source, result, producer, seg)]
    groups += [_lesion_group(source, result, producer, lesion) for lesion in result.lesions]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURES[result.stage],
        imaging_measurements=groups,
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[header, seg],
        content=report,
        series_instance_uid=generate_uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[producer.equipment()],
        manufacturer_model_name=MODEL_NAME,
        software_versions=cast(Any, list(producer.software_versions)),
        device_serial_number=producer.serial_number,
    )
    mark_ai_generated(sr, producer, "findings SR")
    return sr
