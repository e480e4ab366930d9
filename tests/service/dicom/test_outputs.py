"""SEG, SR (TID 1500) and SC outputs: highdicom round trips against the pipeline's analysis."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset

from imaging.postprocess import Lesion
from models_registry.registry import Registry
from service.dicom.identity import NOT_FOR_CLINICAL_USE, SourceHeaderError, parse_header
from service.dicom.outputs import ResultObjects, build_outputs
from service.inference import Analysis, analyse
from tests.imaging import dicom_factory as dcm
from tests.service.dicom.conftest import mammogram, referenced_uids, ultrasound
from tests.service.dicom.matrix import he_tile_sc, with_lesions, without_lesions

PROBABILITY_OF_CANCER = "111047"
AREA = "42798000"
CAD_SUMMARY = "111017"
WITH_FINDINGS, WITHOUT_FINDINGS = "111242", "111241"
NOT_EVALUATED = "373121007"
CANCER = hd.sr.CodedConcept(PROBABILITY_OF_CANCER, "DCM", "Probability of cancer")


def evaluations(group: Any) -> dict[str, str]:
    """The CODE items of a measurement group: concept name code -> value code."""
    return {item.name.value: item.value.value for item in group.get_qualitative_evaluations()}


def image_group(sr: Dataset) -> Any:
    """The TID 1501 image-level group ("breastdx image findings")."""
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 1 and groups[0].tracking_identifier == "breastdx image findings"
    return groups[0]


def multiframe_us() -> Dataset:
    ds, _ = dcm.multiframe_ultrasound(frames=3, rows=96, columns=128)
    return ds


CASES: dict[str, tuple[str, Callable[[], Dataset]]] = {
    "mammogram": ("mammography", mammogram),
    "ultrasound": ("ultrasound", ultrasound),
    "multiframe-ultrasound": ("ultrasound", multiframe_us),
    "pathology-tile": ("histopathology", he_tile_sc),
}


def outputs_for(
    registry: Registry, stage: str, data: bytes, lesions: bool = True
) -> tuple[Dataset, Analysis, ResultObjects]:
    analysis = analyse(stage, [data], registry=registry)[0]
    analysis = with_lesions(analysis) if lesions else without_lesions(analysis)
    header = parse_header(data)
    card = registry.card(analysis.result.model.ref)
    return header, analysis, build_outputs(header, analysis, card)


def seg_pixels(seg: hd.seg.Segmentation, header: Dataset, frame: int) -> np.ndarray:
    """Segment 1 of the SEG over the source frame, ``(H, W)`` bool."""
    if int(header.get("NumberOfFrames", 1) or 1) > 1:
        pixels = seg.get_pixels_by_source_frame(header.SOPInstanceUID, source_frame_numbers=[frame])
    else:
        pixels = seg.get_pixels_by_source_instance([header.SOPInstanceUID])
    return np.asarray(pixels[0, :, :, 0]) > 0  # (H, W)


def check_common(ds: Dataset, header: Dataset, ref: str) -> None:
    """New UIDs, the source's study and patient, breastdx and the model named, AI marked."""
    assert ds.StudyInstanceUID == header.StudyInstanceUID
    assert ds.SeriesInstanceUID != header.SeriesInstanceUID
    assert ds.SOPInstanceUID != header.SOPInstanceUID
    assert ds.PatientName == header.PatientName and ds.PatientID == header.PatientID
    assert ds.Manufacturer == "breastdx"
    assert ref in ds.SoftwareVersions
    assert "NOT FOR CLINICAL USE" in ds.SeriesDescription
    ours = [e for e in ds.ContributingEquipmentSequence if e.Manufacturer == "breastdx"]
    assert len(ours) == 1 and ours[0].ManufacturerModelName == ref
    purpose = ours[0].PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("109102", "DCM")
    assert header.SOPInstanceUID in referenced_uids(ds)


@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_round_trip(registry: Registry, case: str) -> None:
    stage, make = CASES[case]
    header, analysis, outputs = outputs_for(registry, stage, dcm.to_bytes(make()))
    result, card = analysis.result, registry.card(analysis.result.model.ref)
    frame = result.input.frame_index + 1
    encoded = outputs.encoded()
    uids = {str(ds.SOPInstanceUID) for ds in outputs.datasets}
    series = {str(ds.SeriesInstanceUID) for ds in outputs.datasets}
    assert len(uids) == 3 and len(series) == 3

    seg = hd.seg.segread(io.BytesIO(encoded[0]))
    assert np.array_equal(seg_pixels(seg, header, frame), analysis.mask > 0)
    check_common(seg, header, card.ref)
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "Lesion" and segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == card.name and algorithm.AlgorithmVersion == str(card.version)
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    assert seg.ContentLabel == "BREASTDX"

    sr = hd.sr.srread(io.BytesIO(encoded[1]))
    check_common(sr, header, card.ref)
    assert seg.SOPInstanceUID in referenced_uids(sr)
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == 1 + len(result.lesions) == 3
    lesion_groups = [
        g for g in groups if g.reference_type == hd.sr.CodedConcept("111030", "DCM", "Image Region")
    ]
    assert len(lesion_groups) == 2
    spacing_known = result.input.pixel_spacing_mm is not None
    for group, lesion in zip(lesion_groups, result.lesions, strict=True):
        assert group.tracking_identifier == f"Lesion {lesion.id}"
        area = group.get_measurements(name=hd.sr.CodedConcept(AREA, "SCT", "Area"))[0]
        expected_area = lesion.area_mm2 if spacing_known else lesion.area_px
        assert area.value == pytest.approx(expected_area, rel=1e-4)
        assert area.unit.value == ("mm2" if spacing_known else "{pixels}")
        own = getattr(lesion, "malignancy", None)
        probabilities = group.get_measurements(name=CANCER)
        if stage == "histopathology" or own is not None:
            expected = own if own is not None else lesion.mean_probability
            assert [p.value for p in probabilities] == [pytest.approx(expected, abs=1e-6)]
        else:  # an image-level score only: said, not repeated per lesion
            assert probabilities == []
            assert evaluations(group)[PROBABILITY_OF_CANCER] == NOT_EVALUATED
        assert group.roi is not None and group.roi.value_type == hd.sr.ValueTypeValues.SCOORD
    image = image_group(sr)
    assert evaluations(image)[CAD_SUMMARY] == WITH_FINDINGS
    if result.malignancy is not None:
        score = image.get_measurements(name=CANCER)[0]
        assert score.value == pytest.approx(result.malignancy.probability, abs=1e-6)
    observer = sr.content.get_observer_contexts()[0]
    assert observer.observer_identifying_attributes.model_name == card.ref  # type: ignore[union-attr]

    sc = pydicom.dcmread(io.BytesIO(encoded[2]))
    check_common(sc, header, card.ref)
    assert np.array_equal(sc.pixel_array, analysis.overlay)
    assert NOT_FOR_CLINICAL_USE in sc.ImageComments
    reference = sc.SourceImageSequence[0]
    assert reference.ReferencedSOPInstanceUID == header.SOPInstanceUID
    if int(header.get("NumberOfFrames", 1) or 1) > 1:
        assert reference.ReferencedFrameNumber == frame


def test_multiframe_seg_references_the_analysed_frame(registry: Registry) -> None:
    data = dcm.to_bytes(multiframe_us())
    header, analysis, outputs = outputs_for(registry, "ultrasound", data)
    frame = analysis.result.input.frame_index + 1
    derivation = outputs.seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    source = derivation.SourceImageSequence[0]
    assert source.ReferencedSOPClassUID == uid.UltrasoundMultiFrameImageStorage
    assert (source.ReferencedSOPInstanceUID, source.ReferencedFrameNumber) == (
        header.SOPInstanceUID,
        frame,
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_finding_writes_no_seg_and_says_so(registry: Registry, case: str) -> None:
    stage, make = CASES[case]
    _, _, outputs = outputs_for(registry, stage, dcm.to_bytes(make()), lesions=False)
    assert outputs.seg is None and len(outputs.encoded()) == 2  # SR and SC
    sr = hd.sr.srread(io.BytesIO(outputs.encoded()[0]))
    assert sr.content.get_planar_roi_measurement_groups() == []
    found = evaluations(image_group(sr))
    assert found[CAD_SUMMARY] == WITHOUT_FINDINGS
    assert found["52988006"] == "121054"  # Lesion: Absent


class ScoredLesion(Lesion):
    """A lesion as the lesion-level models write it: its own malignancy and detection score."""

    malignancy: float | None = None
    score: float | None = None


def test_lesion_groups_carry_each_lesions_own_scores(registry: Registry) -> None:
    data = dcm.to_bytes(mammogram())
    analysis = with_lesions(analyse("mammography", [data], registry=registry)[0])
    own = [(0.83, 0.97), (0.12, 0.64)]
    lesions = [
        ScoredLesion(**lesion.model_dump(exclude={"malignancy", "score"}), malignancy=m, score=d)
        for lesion, (m, d) in zip(analysis.result.lesions, own, strict=True)
    ]
    result = analysis.result.model_copy(update={"lesions": lesions})
    analysis = Analysis(result=result, mask=analysis.mask, overlay=analysis.overlay)
    outputs = build_outputs(parse_header(data), analysis, registry.card(result.model.ref))
    sr = hd.sr.srread(io.BytesIO(outputs.encoded()[1]))
    certainty = hd.sr.CodedConcept("111012", "DCM", "Certainty of Finding")
    groups = [
        g
        for g in sr.content.get_planar_roi_measurement_groups()
        if g.tracking_identifier != ("breastdx lesion mask")
    ]
    assert [g.get_measurements(name=CANCER)[0].value for g in groups] == [0.83, 0.12]
    assert [g.get_measurements(name=certainty)[0].value for g in groups] == [0.97, 0.64]
    assert all(PROBABILITY_OF_CANCER not in evaluations(g) for g in groups)


def test_outputs_carry_the_sources_anatomy(registry: Registry) -> None:
    ds = mammogram()  # left MLO, Body Part Examined BREAST
    ds.PatientOrientation = ["A", "FR"]
    data = dcm.to_bytes(ds)
    _, _, outputs = outputs_for(registry, "mammography", data)
    seg, _, sc = (pydicom.dcmread(io.BytesIO(b)) for b in outputs.encoded())
    for image in (seg, sc):
        assert image.BodyPartExamined == "BREAST"
        assert list(image.PatientOrientation) == ["A", "FR"]
    assert sc.Laterality == "L" and "Laterality" not in seg  # the SEG IOD has no place for it
    region = seg.SegmentSequence[0].AnatomicRegionSequence[0]
    assert region.AnatomicRegionModifierSequence[0].CodeValue == "7771000"  # SCT Left
    image = image_group(hd.sr.srread(io.BytesIO(outputs.encoded()[1])))
    assert evaluations(image)["111031"] == "399368009"  # Image View: medio-lateral oblique


def test_outputs_refuse_a_mask_of_another_geometry(registry: Registry) -> None:
    data = dcm.to_bytes(ultrasound())
    analysis = analyse("ultrasound", [data], registry=registry)[0]
    other = parse_header(dcm.to_bytes(ultrasound(rows=100, columns=100)))
    with pytest.raises(SourceHeaderError, match="pixel for pixel"):
        build_outputs(other, analysis, registry.card(analysis.result.model.ref))
    with pytest.raises(SourceHeaderError, match="card"):
        build_outputs(parse_header(data), analysis, registry.card("mg-tiny"))


def test_missing_type2_attributes_are_added_empty(registry: Registry) -> None:
    ds = dcm.with_attributes(ultrasound(), PatientSex=None, StudyID=None, AccessionNumber=None)
    _, _, outputs = outputs_for(registry, "ultrasound", dcm.to_bytes(ds))
    for out in outputs.datasets:
        assert "PatientSex" in out and not out.PatientSex
        assert not any(marker in str(out.SeriesDescription) for marker in dcm.PHI_MARKERS)


@pytest.mark.realdata
def test_slide_microscopy_tile(registry: Registry, shared_dicom_dir: Path) -> None:
    """A tiled whole-slide image: the SEG frame sits at the analysed tile's plane position."""
    from training.data.synthetic_draw import he_patch

    ds = pydicom.dcmread(shared_dicom_dir / "sm_image.dcm")
    rng = np.random.default_rng(0)
    tiles = np.stack([he_patch(rng, (10, 10), tumour=True) for _ in range(int(ds.NumberOfFrames))])
    ds.PixelData = tiles.tobytes()  # (F, 10, 10, 3): H&E-like colour in place of the grey test
    buffer = io.BytesIO()
    ds.save_as(buffer)
    header, analysis, outputs = outputs_for(registry, "histopathology", buffer.getvalue())
    seg = hd.seg.segread(io.BytesIO(outputs.encoded()[0]))
    assert np.array_equal(seg_pixels(seg, header, 1), analysis.mask > 0)
    assert seg.FrameOfReferenceUID == header.FrameOfReferenceUID
    position = seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSlideSequence[0]
    assert (
        position.RowPositionInTotalImagePixelMatrix,
        position.ColumnPositionInTotalImagePixelMatrix,
    ) == (1, 1)
    sc = pydicom.dcmread(io.BytesIO(outputs.encoded()[2]))
    assert sc.ContainerIdentifier == header.ContainerIdentifier
