"""Without a finding the PACS receives the SR (stating the absence) and the SC, and no SEG."""

from __future__ import annotations

from pathlib import Path

import pytest

from models_registry.registry import Registry
from service.dicom.identity import parse_header, to_bytes
from service.dicom.outputs import build_outputs
from service.inference import analyse
from service.pacs.config import DicomSettings
from service.pacs.delivery import _stored_seg_and_sr, deliver
from tests.imaging import dicom_factory as dcm
from tests.service.dicom.conftest import ultrasound
from tests.service.dicom.matrix import with_lesions, without_lesions
from tests.service.pacs.conftest import ORTHANC_AET, OrthancServer


@pytest.mark.integration
def test_without_a_finding_the_sr_goes_alone(
    registry: Registry, orthanc: OrthancServer, tmp_path: Path
) -> None:
    data = dcm.to_bytes(ultrasound(seed=7))
    analysis = without_lesions(analyse("ultrasound", [data], registry=registry)[0])
    header = parse_header(data)
    outputs = build_outputs(header, analysis, registry.card(analysis.result.model.ref))
    settings = DicomSettings(
        spool_dir=tmp_path,
        destination_ae_title=ORTHANC_AET,
        destination_port=orthanc.dicom_port,
        delivery_attempts=2,
        delivery_backoff_s=0.01,
        timeout_s=10,
    )
    report = deliver(outputs, settings)
    assert report.ok, report.errors
    results = orthanc.wait_for_results(
        str(header.SOPInstanceUID), str(header.StudyInstanceUID), count=2
    )
    assert sorted(results) == ["OT", "SR"]
    assert results["SR"][0].SOPInstanceUID == outputs.sr.SOPInstanceUID


def test_the_hook_sends_the_stored_sr_alone_only_without_a_finding(registry: Registry) -> None:
    data = dcm.to_bytes(ultrasound(seed=8))
    analysis = analyse("ultrasound", [data], registry=registry)[0]
    card = registry.card(analysis.result.model.ref)
    nothing = build_outputs(parse_header(data), without_lesions(analysis), card)
    stored = {("sr", 0): to_bytes(nothing.sr)}

    def lookup(kind: str, index: int) -> bytes | None:
        return stored.get((kind, index))

    found = _stored_seg_and_sr(lookup, 0, False)
    assert found is not None and found[0] is None
    assert found[1].SOPInstanceUID == nothing.sr.SOPInstanceUID
    assert _stored_seg_and_sr(lookup, 0, True) is None  # a finding without its SEG: built anew
    lesions = build_outputs(parse_header(data), with_lesions(analysis), card)
    assert lesions.seg is not None
    stored[("seg", 0)] = to_bytes(lesions.seg)
    both = _stored_seg_and_sr(lookup, 0, True)
    assert both is not None and both[0] is not None
