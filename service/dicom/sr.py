"""The findings as a Comprehensive SR, TID 1500 "Measurement Report" (PS3.16), by highdicom.

Content tree (device observer: the model, TID 1004; procedure: SCT Mammography, Ultrasonography
of breast or Histopathology):

- one TID 1501 group, "breastdx image findings", on the analysed source frame: the image's
  Probability of cancer (DCM 111047), CAD Processing and Findings Summary (DCM 111017: with or
  without findings), Image View (DCM 111031, CID 4014) where the source names one, and when
  nothing was found "Lesion" (SCT 52988006) = "Absent" (DCM 121054);
- when a lesion was found, one TID 1410 group, "breastdx lesion mask", that references segment 1
  of the SEG (IMAGE item with Referenced Segment Number only: the SEG has one frame, and PS3.3
  C.18.3.1 allows one of the two) with the total lesion Area (SCT 42798000);
- one TID 1410 group per lesion, "Lesion N", whose region is the lesion's outline as a closed
  SCOORD POLYLINE (first point repeated, PS3.3 C.18.6.1.2) on the source frame, with its Area and
  the lesion's own scores where the model gives them (see :func:`lesion_scores`).

Areas are in mm2 where the pixel spacing is known, else in UCUM ``{pixels}``. Probabilities are
in [0, 1] (UCUM ``1``). A lesion's Probability of cancer is its own: a model's per-lesion
malignancy, or for histopathology the mean window probability over the region (derivation SCT
373098007 "Mean"). A model that scores only the whole image gives no per-lesion value: the
lesion then says so (Probability of cancer = SCT 373121007 "Not evaluated"; the score is in the
image group) instead of repeating the image's score. A detection score is Certainty of Finding
(DCM 111012). Only standard codes are used (no private scheme for validators to flag).
"""

from __future__ import annotations

import numbers
from typing import Any, Final, cast

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from imaging.dicom_meta import VIEW_CODES
from imaging.postprocess import Lesion
from imaging.record import Laterality, ViewPosition
from models_registry.card import Stage
from service.dicom.identity import MODEL_NAME, Producer, Source, mark_ai_generated, reference_header
from service.dicom.routing import MANUFACTURER
from service.inference.result import AnalysisResult

SR_SERIES_NUMBER: Final = 9802
PIXELS: Final = hd.sr.CodedConcept("{pixels}", "UCUM", "pixels")
PROCEDURES: Final = {
    Stage.MAMMOGRAPHY: codes.SCT.Mammography,
    Stage.ULTRASOUND: codes.SCT.UltrasonographyOfBreast,
    Stage.HISTOPATHOLOGY: codes.SCT.Histopathology,
}
LATERALITY: Final = {Laterality.LEFT: codes.SCT.Left, Laterality.RIGHT: codes.SCT.Right}
# CID 4014 "View for Mammography": the SNOMED CT code of each view (imaging.dicom_meta).
VIEWS: Final = {
    view: hd.sr.CodedConcept(code, "SCT", view.value)
    for code, view in VIEW_CODES.items()
    if code[0].isdigit()
}
MALIGNANCY_FIELDS: Final = ("malignancy", "malignancy_probability")
SCORE_FIELDS: Final = ("score", "detection_score")


def _number(value: object) -> float | None:
    """A probability given as a number or as an object with ``probability`` (None otherwise)."""
    value = getattr(value, "probability", value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(np.clip(float(value), 0.0, 1.0))
    return None


def _lesion_field(lesion: Lesion, names: tuple[str, ...]) -> float | None:
    extra = lesion.model_extra or {}
    for name in names:
        found = _number(getattr(lesion, name, extra.get(name)))
        if found is not None:
            return found
    return None


def lesion_scores(lesion: Lesion, stage: Stage) -> tuple[float | None, float | None]:
    """``(malignancy, detection score)`` of one lesion, each None where the model gives none.

    A lesion's own ``malignancy`` (or ``malignancy_probability``) and ``score`` (or
    ``detection_score``) fields, as the lesion-level models write them; for histopathology the
    region's mean window probability is its malignancy.
    """
    malignancy = _lesion_field(lesion, MALIGNANCY_FIELDS)
    if malignancy is None and stage is Stage.HISTOPATHOLOGY:
        malignancy = float(np.clip(lesion.mean_probability, 0.0, 1.0))
    return malignancy, _lesion_field(lesion, SCORE_FIELDS)


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


def _fraction(name: Any, value: float, producer: Producer, mean: bool = False) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=name,
        value=round(float(np.clip(value, 0.0, 1.0)), 6),
        unit=codes.UCUM.NoUnits,
        derivation=codes.SCT.Mean if mean else None,
        algorithm_id=producer.sr_algorithm(),
    )


def _frames(source: Source) -> list[int] | None:
    return [source.frame_number] if source.frames > 1 else None


def _image_group(
    source: Source, result: AnalysisResult, producer: Producer, found: bool
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 on the source frame: the image's score and what was (not) found."""
    header = source.header
    summary = (
        codes.DCM.AllAlgorithmsSucceededWithFindings
        if found
        else codes.DCM.AllAlgorithmsSucceededWithoutFindings
    )
    evaluations = [hd.sr.QualitativeEvaluation(codes.DCM.CADProcessingAndFindingsSummary, summary)]
    if not found:
        evaluations.append(hd.sr.QualitativeEvaluation(codes.SCT.Lesion, codes.DCM.Absent))
    view = VIEWS.get(result.input.view)
    if view is not None and result.input.view is not ViewPosition.UNKNOWN:
        evaluations.append(hd.sr.QualitativeEvaluation(codes.DCM.ImageView, view))
    measurements = []
    if result.malignancy is not None:
        measurements.append(
            _fraction(codes.DCM.ProbabilityOfCancer, result.malignancy.probability, producer)
        )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier="breastdx image findings"
        ),
        algorithm_id=producer.sr_algorithm(),
        finding_sites=[_finding_site(result)],
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                header.SOPClassUID, header.SOPInstanceUID, _frames(source)
            )
        ],
    )


def _segment_reference(source: Source, seg: Dataset) -> hd.sr.ReferencedSegmentationFrame:
    """Segment 1 of the SEG; its IMAGE item keeps the segment number, not the frame number."""
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
    for item in segment:
        for reference in item.get("ReferencedSOPSequence", []):
            if reference.ReferencedSOPInstanceUID == seg.SOPInstanceUID:
                del reference.ReferencedFrameNumber
    return segment


def _mask_group(
    source: Source, result: AnalysisResult, producer: Producer, seg: Dataset
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier="breastdx lesion mask"
        ),
        referenced_segment=_segment_reference(source, seg),
        finding_type=codes.SCT.Lesion,
        finding_category=codes.SCT.MorphologicallyAbnormalStructure,
        algorithm_id=producer.sr_algorithm(),
        finding_sites=[_finding_site(result)],
        measurements=[_area(result.mask.total_area_px, result.mask.total_area_mm2, producer)],
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
    malignancy, score = lesion_scores(lesion, result.stage)
    measurements = [_area(lesion.area_px, lesion.area_mm2, producer)]
    evaluations = []
    if malignancy is not None:
        mean = result.stage is Stage.HISTOPATHOLOGY and not _own(lesion)
        measurements.append(_fraction(codes.DCM.ProbabilityOfCancer, malignancy, producer, mean))
    else:  # the model scores the whole image only: said here, scored in the image group
        evaluations.append(
            hd.sr.QualitativeEvaluation(codes.DCM.ProbabilityOfCancer, codes.SCT.NotEvaluated)
        )
    if score is not None:
        measurements.append(_fraction(codes.DCM.CertaintyOfFinding, score, producer))
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
        qualitative_evaluations=evaluations or None,
    )


def _own(lesion: Lesion) -> bool:
    return _lesion_field(lesion, MALIGNANCY_FIELDS) is not None


def build_sr(
    source: Source, result: AnalysisResult, producer: Producer, seg: Dataset | None
) -> hd.sr.ComprehensiveSR:
    """A TID 1500 Measurement Report on the analysed frame, referencing the source and ``seg``.

    ``seg`` is None when nothing was found: the report then states the absence of a lesion.
    """
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
    groups: list[Any] = [_image_group(source, result, producer, seg is not None)]
    if seg is not None:
        groups.append(_mask_group(source, result, producer, seg))
        groups += [_lesion_group(source, result, producer, lesion) for lesion in result.lesions]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURES[result.stage],
        imaging_measurements=groups,
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[header] if seg is None else [header, seg],
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
