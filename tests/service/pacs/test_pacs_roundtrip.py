"""Pull mode against Orthanc's DICOMweb: QIDO-RS, WADO-RS, analysis, STOW-RS of the results."""

from __future__ import annotations

import io
import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import uid

from models_registry.registry import Registry
from models_registry.store import DirectoryStore
from service.cli_pacs import main as pacs_main
from service.inference import analyse
from service.pacs.dicomweb import (
    DicomWebClient,
    DicomWebError,
    InstanceRef,
    encode_multipart,
    parse_multipart,
)
from tests.imaging import dicom_factory as dcm
from tests.service.dicom.conftest import mammogram, read, referenced_uids, ultrasound
from tests.service.pacs.conftest import PASSWORD, USER, OrthancServer


def store_of(registry: Registry) -> str:
    store = registry.stores[0]
    assert isinstance(store, DirectoryStore)
    return str(store.root)


def analyze(orthanc: OrthancServer, study_uid: str, *extra: str) -> list[str]:
    return [
        "analyze",
        "--study-uid",
        study_uid,
        "--dicomweb",
        orthanc.dicomweb_url,
        "--user",
        USER,
        "--password",
        PASSWORD,
        *extra,
    ]


@pytest.mark.integration
def test_pull_analyse_and_store_back(
    orthanc: OrthancServer,
    registry: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("BREASTDX_DICOM_SPOOL_DIR", str(tmp_path / "spool"))
    mg = mammogram()
    study = mg.StudyInstanceUID
    us_frames, _ = dcm.multiframe_ultrasound(frames=3, rows=96, columns=128)
    us_j2k = dcm.encode(ultrasound(seed=4), uid.JPEG2000Lossless)
    report = dcm.non_image("sr")
    images = {"mammography": mg, "ultrasound": us_frames, "ultrasound-j2k": us_j2k}
    for ds in [*images.values(), report]:
        ds.StudyInstanceUID = study
        orthanc.upload(dcm.to_bytes(ds))

    assert pacs_main(analyze(orthanc, study, "--store", store_of(registry))) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_uid = {line["sop_instance_uid"]: line for line in lines}
    assert by_uid[report.SOPInstanceUID]["status"] == "skipped"
    for name, ds in images.items():
        line = by_uid[ds.SOPInstanceUID]
        assert line["status"] == "stored", (name, line)
        expected = analyse(line["stage"], [dcm.to_bytes(ds)], registry=registry)[0]
        found = bool(expected.mask.any())  # no lesion: SR and SC, no SEG
        assert line["stage"] == name.split("-")[0] and len(line["outputs"]) == 2 + found
        results = orthanc.results_for(ds.SOPInstanceUID, study)
        assert sorted(results) == (["OT", "SEG", "SR"] if found else ["OT", "SR"]), name
        if not found:
            assert "121191" not in str(results["SR"][0].ContentSequence)  # no segment reference
            continue
        seg = results["SEG"][0]
        assert seg.SOPInstanceUID in referenced_uids(results["SR"][0])
        buffer = io.BytesIO()
        seg.save_as(buffer)
        seg_read = hd.seg.segread(io.BytesIO(buffer.getvalue()))
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            frame = expected.result.input.frame_index + 1
            pixels = seg_read.get_pixels_by_source_frame(ds.SOPInstanceUID, [frame])
        else:
            pixels = seg_read.get_pixels_by_source_instance([ds.SOPInstanceUID])
        assert np.array_equal(pixels[0, :, :, 0] > 0, expected.mask > 0), name

    before = len(orthanc.study_instances(study))
    assert pacs_main(analyze(orthanc, study, "--store", store_of(registry))) == 0
    again = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {line["status"] for line in again} == {"duplicate", "skipped"}
    assert len(orthanc.study_instances(study)) == before
    skipped_results = [line for line in again if "breastdx result" in (line["reason"] or "")]
    assert len(skipped_results) == len(images)  # our own overlays are never analysed


@pytest.mark.integration
def test_wrong_password_is_reported(
    orthanc: OrthancServer, registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    args = analyze(orthanc, "1.2.3.4", "--store", store_of(registry))
    args[args.index("--password") + 1] = "wrong"
    assert pacs_main(args) == 1
    assert "user and password" in capsys.readouterr().err


@pytest.mark.integration
def test_stow_and_wado_round_trip(orthanc: OrthancServer) -> None:
    ds = ultrasound(seed=9)
    with DicomWebClient(orthanc.dicomweb_url, user=USER, password=PASSWORD) as client:
        client.store([dcm.to_bytes(ds)])
        found = client.search_instances(ds.StudyInstanceUID)
        assert [ref.sop_instance_uid for ref in found] == [ds.SOPInstanceUID]
        back = read(client.retrieve_instance(found[0]))
        assert back.SOPInstanceUID == ds.SOPInstanceUID and back.PixelData == ds.PixelData


def test_multipart_round_trip() -> None:
    parts = [b"first\r\n--not-a-boundary", b"\x00\x01second"]
    content_type, body = encode_multipart(parts)
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    assert parse_multipart(content_type, body) == parts


def test_uids_from_answers_never_reach_a_path() -> None:
    client = DicomWebClient("http://127.0.0.1:9/dicom-web")
    try:
        with pytest.raises(DicomWebError, match="not a valid UID"):
            client.retrieve_instance(InstanceRef("1.2", "../../tools", "1.3", "1.4", "US"))
        with pytest.raises(DicomWebError, match="not a valid UID"):
            client.search_instances("1.2/../x")
    finally:
        client.close()


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert pacs_main(["analyze", "--study-uid", "1.2.3"]) == 2
    assert "--dicomweb" in capsys.readouterr().err
    assert pacs_main(["analyze", "--study-uid", "x/../y", "--dicomweb", "http://h/dw"]) == 2
    assert "not a valid UID" in capsys.readouterr().err
