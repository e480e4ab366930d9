"""SEG, SR (TID 1500) and SC outputs: highdicom round trips against the pipeline's analysis."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.pixels import set_pixel_data

from imaging.geometry import Geometry
from imaging.postprocess import postprocess_mask
from models_registry.registry import Registry
from service.dicom.identity import NOT_FOR_CLINICAL_USE, SourceHeaderError, parse_header
from service.dicom.outputs import ResultObjects, build_outputs
from service.inference import Analysis, analyse
from service.inference.result import mask_summary
from tests.imaging import dicom_factory as dcm
from tests.service.dicom.conftest import mammogram, referenced_uids, ultrasound

PROBABILITY_OF_CANCER = "111047"
AREA = "42798000"


def with_two_lesions(analysis: Analysis) -> Analysis:
    """The analysis with a made-up mask of two lesions (the tiny models often find none)."""
    rows, columns = analysis.mask.shape
    prob = np.zeros((rows, columns), np.float32)
    prob[rows // 4 : rows // 2, columns // 5 : columns // 2] = 0.9
    prob[rows * 2 // 3 : rows * 3 // 4, columns * 2 // 3 : columns * 3 // 4] = 0.8
    spacing = analysis.result.input.pixel_spacing_mm
    masks = postprocess_mask(
        prob, Geometry((rows, columns)), threshold=0.5, min_area_px=1, pixel_spacing_mm=spacing
    )
    result = analysis.result.model_copy(
        update={"lesions": masks.lesions, "mask": mask_summary(masks)}
    )
    mask = np.where(masks.mask, 255, 0).astype(np.uint8)
    return Analysis(result=result, mask=mask, overlay=analysis.overlay)


def he_tile_sc() -> Dataset:
    """A secondary-capture pathology tile (RGB, Modality SM)."""
    from training.data.synthetic_draw import he_patch

    tile = he_patch(np.random.default_rng(3), (64, 64), tumour=True)  # (H, W, 3) uint8
    ds = dcm.base_dataset(uid.SecondaryCaptureImageStorage, "SM")
    set_pixel_data(ds, tile, "RGB", 8, generate_instance_uid=False)
    return ds


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
    if lesions:
        analysis = with_two_lesions(analysis)
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
        name = hd.sr.CodedConcept(PROBABILITY_OF_CANCER, "DCM", "Probability of cancer")
        probability = group.get_measurements(name=name)[0].value
        if stage == "histopathology":
            assert probability == pytest.approx(lesion.mean_probability, abs=1e-6)
        else:
            assert result.malignancy is not None
            assert probability == pytest.approx(result.malignancy.probability, abs=1e-6)
        assert group.roi is not None and group.roi.value_type == hd.sr.ValueTypeValues.SCOORD
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


def test_empty_mask_still_gives_a_full_frame(registry: Registry) -> None:
    header, analysis, outputs = outputs_for(
        registry, "mammography", dcm.to_bytes(mammogram()), lesions=False
    )
    if analysis.result.lesions:
        pytest.skip("the tiny model found a lesion on this image")
    seg = hd.seg.segread(io.BytesIO(outputs.encoded()[0]))
    assert seg.NumberOfFrames == 1
    assert not seg_pixels(seg, header, 1).any()
    assert (
        len(
            hd.sr.srread(
                io.BytesIO(outputs.encoded()[1])
            ).content.get_planar_roi_measurement_groups()
        )
        == 1
    )


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
