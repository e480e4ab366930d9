"""Routing: instance -> stage by SOP Class, Modality and tags; the rest refused with a rule."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset

from models_registry.card import Stage
from service.dicom.routing import STORAGE_SOP_CLASSES, UnroutableError, route
from tests.imaging import dicom_factory as dcm


def header(sop_class: str, modality: str, **attributes: object) -> Dataset:
    ds = dcm.base_dataset(sop_class, modality)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("sop_class", "modality", "attributes", "stage"),
    [
        (uid.DigitalMammographyXRayImageStorageForPresentation, "MG", {}, Stage.MAMMOGRAPHY),
        (
            uid.DigitalMammographyXRayImageStorageForProcessing,
            "MG",
            {"BodyPartExamined": "BREAST"},
            Stage.MAMMOGRAPHY,
        ),
        (
            uid.DigitalXRayImageStorageForPresentation,
            "DX",
            {"BodyPartExamined": "BREAST"},
            Stage.MAMMOGRAPHY,
        ),
        (
            uid.DigitalXRayImageStorageForProcessing,
            "DX",
            {"ViewPosition": "MLO"},
            Stage.MAMMOGRAPHY,
        ),
        (uid.ComputedRadiographyImageStorage, "CR", {"ViewPosition": "CC"}, Stage.MAMMOGRAPHY),
        (uid.ComputedRadiographyImageStorage, "MG", {}, Stage.MAMMOGRAPHY),
        (uid.UltrasoundImageStorage, "US", {}, Stage.ULTRASOUND),
        (
            uid.UltrasoundMultiFrameImageStorage,
            "US",
            {"BodyPartExamined": "BREAST"},
            Stage.ULTRASOUND,
        ),
        (
            uid.VLWholeSlideMicroscopyImageStorage,
            "SM",
            {"ImageType": ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"], "SamplesPerPixel": 3},
            Stage.HISTOPATHOLOGY,
        ),
        (uid.VLMicroscopicImageStorage, "GM", {"SamplesPerPixel": 3}, Stage.HISTOPATHOLOGY),
        (uid.SecondaryCaptureImageStorage, "SM", {"SamplesPerPixel": 3}, Stage.HISTOPATHOLOGY),
        (
            uid.SecondaryCaptureImageStorage,
            "OT",
            {"SamplesPerPixel": 3, "ContainerIdentifier": "SLIDE-1"},
            Stage.HISTOPATHOLOGY,
        ),
        (
            uid.MultiFrameTrueColorSecondaryCaptureImageStorage,
            "XC",
            {"SamplesPerPixel": 3},
            Stage.HISTOPATHOLOGY,
        ),
    ],
)
def test_accepted_instances_go_to_their_stage(
    sop_class: str, modality: str, attributes: dict[str, object], stage: Stage
) -> None:
    chosen = route(header(sop_class, modality, **attributes))
    assert chosen.stage is stage and chosen.reason
    assert sop_class in STORAGE_SOP_CLASSES


@pytest.mark.parametrize(
    ("sop_class", "modality", "attributes", "rule"),
    [
        (uid.DigitalXRayImageStorageForPresentation, "DX", {"BodyPartExamined": "CHEST"}, "CHEST"),
        (uid.DigitalXRayImageStorageForPresentation, "DX", {"ViewPosition": "PA"}, "mammogram"),
        (uid.ComputedRadiographyImageStorage, "CR", {}, "mammogram"),
        (uid.UltrasoundImageStorage, "US", {"BodyPartExamined": "LIVER"}, "LIVER"),
        (
            uid.DigitalMammographyXRayImageStorageForPresentation,
            "MG",
            {"Manufacturer": "breastdx"},
            "loop",
        ),
        (
            uid.VLWholeSlideMicroscopyImageStorage,
            "SM",
            {"ImageType": ["ORIGINAL", "PRIMARY", "LABEL", "NONE"], "SamplesPerPixel": 3},
            "LABEL",
        ),
        (
            uid.VLWholeSlideMicroscopyImageStorage,
            "SM",
            {"ImageType": ["DERIVED", "PRIMARY", "THUMBNAIL", "RESAMPLED"], "SamplesPerPixel": 3},
            "THUMBNAIL",
        ),
        (uid.VLWholeSlideMicroscopyImageStorage, "SM", {"SamplesPerPixel": 1}, "colour"),
        (uid.SecondaryCaptureImageStorage, "OT", {"SamplesPerPixel": 3}, "pathology tile"),
        (uid.SecondaryCaptureImageStorage, "SM", {"SamplesPerPixel": 1}, "pathology tile"),
        (uid.SecondaryCaptureImageStorage, "OT", {"ContentLabel": "BREASTDX"}, "loop"),
        (uid.CTImageStorage, "CT", {}, "not analysed"),
        (uid.BreastTomosynthesisImageStorage, "MG", {}, "not analysed"),
        (uid.ComprehensiveSRStorage, "SR", {}, "not an image"),
        (uid.SegmentationStorage, "SEG", {}, "not an image"),
        ("", "MG", {}, "SOP Class UID"),
    ],
)
def test_other_instances_are_refused_with_the_rule(
    sop_class: str, modality: str, attributes: dict[str, object], rule: str
) -> None:
    with pytest.raises(UnroutableError) as caught:
        route(header(sop_class, modality, **attributes))
    assert rule in caught.value.message
    assert caught.value.code == "unroutable"


def test_refusals_never_quote_patient_data() -> None:
    ds = header(uid.DigitalXRayImageStorageForPresentation, "DX", BodyPartExamined="CHEST")
    with pytest.raises(UnroutableError) as caught:
        route(ds)
    text = caught.value.message + repr(caught.value.to_dict())
    assert not any(marker in text for marker in dcm.PHI_MARKERS)


@pytest.mark.realdata
def test_real_files_route(shared_dicom_dir: Path) -> None:
    def routed(name: str) -> Stage:
        return route(pydicom.dcmread(shared_dicom_dir / name, stop_before_pixels=True)).stage

    assert routed("MG_Explicit_Little.dcm") is Stage.MAMMOGRAPHY
    assert routed("US1_UNCR.dcm") is Stage.ULTRASOUND
    assert routed("US1_J2KR.dcm") is Stage.ULTRASOUND
    assert routed("sm_image.dcm") is Stage.HISTOPATHOLOGY
    for refused in ("dx_image.dcm", "seg_image_sm_dots.dcm", "sm_annotations.dcm"):
        with pytest.raises(UnroutableError):
            routed(refused)
