"""Stage checks by anatomy (issue 14): body part, view and SOP Class decide, not the modality.

Runs the real pipeline with the session's tiny models on generated DICOM and, where present, the
real files of ``../shared/data/dicom``.
"""

from __future__ import annotations

import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset

from models_registry.registry import Registry
from service.dicom.routing import UnroutableError, route
from service.inference import analyse
from service.inference.stages import WrongStageError
from tests.conftest import shared_data_root
from tests.imaging import dicom_factory as dcm
from tests.service.dicom.conftest import registry as registry  # the session's tiny models
from tests.service.dicom.matrix import film_sc, radiograph

DX = uid.DigitalXRayImageStorageForPresentation


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def breast_region_sc() -> Dataset:
    """A film SC (Modality OT) that says "breast" in the retired SRT code only."""
    ds = film_sc(modality="OT")
    del ds.BodyPartExamined
    ds.AnatomicRegionSequence = [code("T-04000", "SRT", "Breast")]
    return ds


def mlo_view_code_cr() -> Dataset:
    ds = radiograph(uid.ComputedRadiographyImageStorage, "CR")
    ds.ViewCodeSequence = [code("399368009", "SCT", "medio-lateral oblique")]
    return ds


ACCEPTED = {
    "sc-film-rg-breast": film_sc,
    "sc-film-ot-region-code": breast_region_sc,
    "dx-body-part-breast": lambda: radiograph(DX, "DX", BodyPartExamined="BREAST"),
    "dx-view-cc": lambda: radiograph(DX, "DX", ViewPosition="CC"),
    "cr-view-code-mlo": mlo_view_code_cr,
}
REFUSED = {
    "dx-chest": (lambda: radiograph(DX, "DX", BodyPartExamined="CHEST"), "CHEST"),
    "dx-no-anatomy": (lambda: radiograph(DX, "DX"), "names neither"),
    "mg-labelled-thorax": (
        lambda: dcm.with_attributes(dcm.mammogram()[0], BodyPartExamined="THORAX"),
        "THORAX",
    ),
    "sc-film-of-the-knee": (lambda: film_sc(body_part="KNEE"), "KNEE"),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_breast_anatomy_reaches_the_mammography_model(registry: Registry, case: str) -> None:
    data = dcm.to_bytes(ACCEPTED[case]())
    result = analyse("mammography", [data], registry=registry)[0].result
    assert result.stage.value == "mammography" and result.model.ref == "mg-tiny@1"
    assert not any("analysed as mammography" in w for w in result.warnings)
    assert route(pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))).stage.value == (
        "mammography"
    )


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_other_anatomy_is_refused_naming_it(registry: Registry, case: str) -> None:
    make, named = REFUSED[case]
    data = dcm.to_bytes(make())
    with pytest.raises(WrongStageError) as caught:
        analyse("mammography", [data], registry=registry)
    assert caught.value.code == "wrong_stage" and caught.value.http_status == 422
    assert named in caught.value.message
    with pytest.raises(UnroutableError):
        route(pydicom.dcmread(pydicom.filebase.DicomBytesIO(data)))


@pytest.mark.realdata
def test_the_real_dog_chest_dx_is_refused(registry: Registry) -> None:
    path = shared_data_root() / "dicom" / "dx_image.dcm"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    with pytest.raises(WrongStageError, match="Body Part Examined is THORAX") as caught:
        analyse("mammography", [path], registry=registry)
    assert caught.value.context["body_part"] == "THORAX"


def test_ultrasound_of_another_organ_warns(registry: Registry) -> None:
    from tests.service.dicom.conftest import ultrasound

    ds = ultrasound()
    ds.BodyPartExamined = "ABDOMEN"
    result = analyse("ultrasound", [dcm.to_bytes(ds)], registry=registry)[0].result
    assert any("Body Part Examined is ABDOMEN" in w for w in result.warnings)
    plain = analyse("ultrasound", [dcm.to_bytes(ultrasound())], registry=registry)[0].result
    assert not any("Body Part Examined" in w for w in plain.warnings)
