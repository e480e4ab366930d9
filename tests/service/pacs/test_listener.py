"""The DICOM listener against real peers: dcmtk's echoscu/storescu in, Orthanc as destination.

Integration tests run a real association on loopback for every case; the handful of unit tests at
the end check the pieces (status answers, UID sanitising, settings) without a network.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from pydicom import uid
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from breastdx.cli import main as breastdx_main
from models_registry.registry import Registry
from models_registry.store import DirectoryStore
from service.cli_dicom import deadletter_main, listener_main
from service.config import get_settings
from service.inference import analyse
from service.jobs.backend import close_backend
from service.jobs.service import job_dicom_output
from service.pacs.config import DicomSettings, get_dicom_settings
from service.pacs.listener import (
    CANNOT_UNDERSTAND,
    DOES_NOT_MATCH,
    DicomListener,
    decodable_transfer_syntaxes,
    status,
)
from service.pacs.processing import Submitter
from service.pacs.state import DiskState, RedisState, safe_name, seen_key
from tests.imaging import dicom_factory as dcm
from tests.service.dicom.conftest import mammogram, read, real_or, referenced_uids, ultrasound
from tests.service.pacs.conftest import (
    LISTENER_AET,
    MODALITY_AET,
    ORTHANC_AET,
    OrthancServer,
    dcmtk,
    free_port,
)

MakeListener = Callable[..., DicomListener]
TINY_MODELS = {"ultrasound": "us-tiny@1", "mammography": "mg-tiny@1"}


@pytest.fixture
def make_listener(
    tmp_path: Path, registry: Registry, orthanc: OrthancServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[MakeListener]:
    """Start listeners submitting to the job system (in-process mode) that deliver to Orthanc.

    The job system and the delivery hook read their settings from the environment, as a worker
    process does; ``overrides`` become ``BREASTDX_DICOM_*`` variables.
    """
    started: list[DicomListener] = []
    store = registry.stores[0]
    assert isinstance(store, DirectoryStore)
    monkeypatch.setenv("BREASTDX_MODEL_STORE", str(store.root))
    monkeypatch.delenv("BREASTDX_EXTRA_MODEL_STORES", raising=False)

    def make(**overrides: Any) -> DicomListener:
        values = {
            "SPOOL_DIR": tmp_path / "spool",
            "DESTINATION_AE_TITLE": ORTHANC_AET,
            "DESTINATION_PORT": orthanc.dicom_port,
            "DELIVERY_ATTEMPTS": 2,
            "DELIVERY_BACKOFF_S": 0.01,
            "TIMEOUT_S": 10,
        } | overrides
        for name, value in values.items():
            monkeypatch.setenv(f"BREASTDX_DICOM_{name}", str(value))
        get_settings.cache_clear()
        get_dicom_settings.cache_clear()
        settings = DicomSettings(port=0, allowed_aes=[MODALITY_AET])
        listener = DicomListener(settings, Submitter(settings))
        listener.start()
        started.append(listener)
        return listener

    yield make
    for listener in started:
        listener.stop()
        close_backend(listener.submitter.service)


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def storescu(
    port: int, *files: Path, aet: str = MODALITY_AET, options: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    command = [dcmtk("storescu"), *options, "-aet", aet, "-aec", LISTENER_AET]
    command += ["127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def echoscu(port: int, aet: str = MODALITY_AET) -> subprocess.CompletedProcess[str]:
    command = [dcmtk("echoscu"), "-aet", aet, "-aec", LISTENER_AET, "127.0.0.1", str(port)]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def c_store(port: int, ds: Dataset) -> Dataset:
    """Send ``ds`` with pynetdicom and return the response status (to read Error Comment)."""
    ae = AE(ae_title=MODALITY_AET)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=LISTENER_AET)
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


@pytest.mark.integration
def test_echo_and_whitelist(make_listener: MakeListener, tmp_path: Path) -> None:
    listener = make_listener()
    assert echoscu(listener.port).returncode == 0
    refused = echoscu(listener.port, aet="INTRUDER")
    assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stderr
    image = write(tmp_path, "us.dcm", dcm.to_bytes(ultrasound(seed=5)))
    assert storescu(listener.port, image, aet="INTRUDER").returncode != 0
    assert listener.submitter.wait_idle(30)
    assert not list((tmp_path / "spool" / "state" / "claims").iterdir())


@pytest.mark.integration
def test_us_and_mg_results_arrive_in_orthanc(
    make_listener: MakeListener, registry: Registry, orthanc: OrthancServer, tmp_path: Path
) -> None:
    listener = make_listener()
    cases = {
        "ultrasound": real_or("US1_UNCR.dcm", ultrasound(seed=1)),
        "mammography": real_or("MG_Explicit_Little.dcm", mammogram()),
    }
    files = [write(tmp_path, f"{stage}.dcm", data) for stage, data in cases.items()]
    sent = storescu(listener.port, *files)
    assert sent.returncode == 0, sent.stderr
    assert listener.submitter.wait_idle(120)
    for stage, data in cases.items():
        source = read(data)
        expected = analyse(stage, [data], registry=registry)[0].mask  # what the API returns
        found = bool(expected.any())  # no lesion: the SR alone states it, and no SEG
        results = orthanc.wait_for_results(
            source.SOPInstanceUID, source.StudyInstanceUID, count=3 if found else 2
        )
        assert sorted(results) == (["OT", "SEG", "SR"] if found else ["OT", "SR"]), stage
        assert all(len(items) == 1 for items in results.values()), stage
        sr = results["SR"][0]
        assert seg_matches(results, sr, source, expected) if found else no_finding(sr), stage
        assert sr.PatientID == source.PatientID  # filed with the study
        # the PACS holds the very SEG and SR the API serves for the listener's job
        job_id = listener.submitter.state.claimed(
            seen_key(source.SOPInstanceUID, TINY_MODELS[stage])
        )
        assert job_id is not None
        settings = listener.submitter.service
        for kind in ("seg", "sr") if found else ("sr",):
            served = read(job_dicom_output(job_id, kind, 0, settings=settings))
            assert served.SOPInstanceUID == results[kind.upper()][0].SOPInstanceUID


def seg_matches(
    results: dict[str, list[Dataset]], sr: Dataset, source: Dataset, expected: np.ndarray
) -> bool:
    """The SEG in the PACS holds the analysis mask and the SR references it."""
    seg = results["SEG"][0]
    buffer = io.BytesIO()
    seg.save_as(buffer)
    pixels = hd.seg.segread(io.BytesIO(buffer.getvalue())).get_pixels_by_source_instance(
        [source.SOPInstanceUID]
    )[0, :, :, 0]
    return seg.SOPInstanceUID in referenced_uids(sr) and np.array_equal(pixels > 0, expected > 0)


def no_finding(sr: Dataset) -> bool:
    """The SR says "Lesion: Absent" (SCT 52988006 = DCM 121054) and holds no lesion group."""
    codes = {
        (str(e.value[0].CodeValue) if e.value else "")
        for e in sr.iterall()
        if e.keyword in ("ConceptNameCodeSequence", "ConceptCodeSequence")
    }
    return {"52988006", "121054", "111241"} <= codes and "121191" not in codes


@pytest.mark.integration
def test_malformed_dataset_gets_a_failure_and_the_listener_stays_up(
    make_listener: MakeListener, tmp_path: Path
) -> None:
    listener = make_listener()
    truncated = mammogram()
    truncated.PixelData = truncated.PixelData[: len(truncated.PixelData) // 2]
    answer = c_store(listener.port, truncated)
    assert answer.Status == CANNOT_UNDERSTAND and "truncated" in answer.ErrorComment.lower()
    empty = dcm.with_attributes(mammogram(), Rows=0)
    answer = c_store(listener.port, empty)
    assert answer.Status in (CANNOT_UNDERSTAND, DOES_NOT_MATCH) and answer.ErrorComment
    chest = dcm.with_attributes(mammogram(), Modality="DX", BodyPartExamined="CHEST")
    chest.SOPClassUID = chest.file_meta.MediaStorageSOPClassUID = (
        uid.DigitalXRayImageStorageForPresentation
    )
    answer = c_store(listener.port, chest)
    assert answer.Status == DOES_NOT_MATCH and "CHEST" in answer.ErrorComment
    refused = storescu(listener.port, write(tmp_path, "chest.dcm", dcm.to_bytes(chest)))
    assert refused.returncode != 0
    assert echoscu(listener.port).returncode == 0
    assert listener.submitter.wait_idle(30)


@pytest.mark.integration
def test_same_instance_twice_gives_no_duplicate_results(
    make_listener: MakeListener,
    orthanc: OrthancServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    listener = make_listener()
    source = dcm.encode(ultrasound(seed=2), uid.JPEGLSLossless)  # compressed on the wire
    image = write(tmp_path, "us.dcm", dcm.to_bytes(source))
    jpeg_ls = ("--propose-jls-lossless",)
    assert storescu(listener.port, image, options=jpeg_ls).returncode == 0
    assert storescu(listener.port, image, options=jpeg_ls).returncode == 0
    assert listener.submitter.wait_idle(120)
    assert orthanc.wait_for_results(source.SOPInstanceUID, source.StudyInstanceUID)
    assert storescu(listener.port, image, options=jpeg_ls).returncode == 0  # after delivery too
    assert listener.submitter.wait_idle(120)
    results = orthanc.results_for(source.SOPInstanceUID, source.StudyInstanceUID)
    assert {modality: len(found) for modality, found in results.items()} == {
        "OT": 1,
        "SEG": 1,
        "SR": 1,
    }
    claims = list((tmp_path / "spool" / "state" / "claims").iterdir())
    assert [c.name for c in claims] == [seen_key(source.SOPInstanceUID, "us-tiny@1")]
    assert source.SOPInstanceUID in caplog.text  # logs name instances by UID only
    assert not any(marker in caplog.text for marker in dcm.PHI_MARKERS)


class RecordingScp:
    """A Storage SCP on ``port`` that keeps what it receives: the destination coming back up."""

    def __init__(self, ae_title: str, port: int) -> None:
        self.received: list[Dataset] = []
        self.ae = AE(ae_title=ae_title)
        for sop_class in (uid.SegmentationStorage, uid.ComprehensiveSRStorage):
            self.ae.add_supported_context(sop_class)
        self.ae.add_supported_context(uid.SecondaryCaptureImageStorage)
        self.ae.add_supported_context(Verification)
        self.lock = threading.Lock()
        handlers = [(evt.EVT_C_STORE, self._store)]
        self.server = self.ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)

    def _store(self, event: evt.Event) -> int:
        with self.lock:
            self.received.append(read(event.encoded_dataset()))
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


@pytest.mark.integration
def test_dead_letter_after_retries_and_replay(
    make_listener: MakeListener, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    listener = make_listener(DESTINATION_AE_TITLE="DEST", DESTINATION_PORT=port)
    source = ultrasound(seed=3)
    assert storescu(listener.port, write(tmp_path, "us.dcm", dcm.to_bytes(source))).returncode == 0
    assert listener.submitter.wait_idle(120)
    capsys.readouterr()
    assert deadletter_main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    letter = json.loads(lines[0])
    assert letter["attempts"] == 2 and letter["pending"] == [f"c-store:DEST@127.0.0.1:{port}"]
    assert letter["source_sop_instance_uid"] == source.SOPInstanceUID
    assert not any(marker in lines[0] for marker in dcm.PHI_MARKERS)
    assert deadletter_main(["replay", letter["id"]]) == 1  # still down
    scp = RecordingScp("DEST", port)
    try:
        assert deadletter_main(["replay", letter["id"]]) == 0
    finally:
        scp.stop()
    assert sorted(str(ds.Modality) for ds in scp.received) == ["OT", "SEG", "SR"]
    assert all(source.SOPInstanceUID in referenced_uids(ds) for ds in scp.received)
    capsys.readouterr()
    assert deadletter_main(["list"]) == 0
    assert capsys.readouterr().out == ""
    assert deadletter_main(["replay", "../../etc"]) == 1


def test_status_answers_are_short_printable_comments() -> None:
    answer = status(DOES_NOT_MATCH, "a\\b\nc" + "x" * 100)
    assert answer.Status == DOES_NOT_MATCH
    assert len(answer.ErrorComment) == 64 and "\\" not in answer.ErrorComment
    assert "ErrorComment" not in status(0)


def test_decoders_cover_compressed_transfer_syntaxes() -> None:
    syntaxes = set(decodable_transfer_syntaxes())
    for needed in (
        uid.ExplicitVRLittleEndian,
        uid.ImplicitVRLittleEndian,
        uid.JPEGBaseline8Bit,
        uid.JPEGLosslessSV1,
        uid.JPEGLSLossless,
        uid.JPEG2000Lossless,
        uid.RLELossless,
    ):
        assert needed in syntaxes


def test_uids_are_sanitised_before_they_name_files(tmp_path: Path) -> None:
    assert safe_name("1.2.840.10008.1") == "1.2.840.10008.1"
    for hostile in ("../../etc/passwd", "1.2/../3", "..", "", "a" * 300, ".hidden"):
        name = safe_name(hostile)
        assert name.startswith("h-") and "/" not in name and len(name) == 66
    state = DiskState(tmp_path / "state")
    assert state.claim(seen_key("../../x", "m@1"), "v", 60)
    assert not state.claim(seen_key("../../x", "m@1"), "v", 60)
    assert [p.parent for p in (tmp_path / "state").rglob("*") if p.is_file()] == [
        tmp_path / "state" / "claims"
    ]


def test_listener_needs_an_allowed_ae(registry: Registry, tmp_path: Path) -> None:
    settings = DicomSettings(spool_dir=tmp_path)
    with pytest.raises(ValueError, match="allowed"):
        DicomListener(settings, Submitter(settings, registry=registry, state=DiskState(tmp_path)))
    assert listener_main(["--port", "0"]) == 1


def test_receive_refuses_without_network(registry: Registry, tmp_path: Path) -> None:
    settings = DicomSettings(spool_dir=tmp_path, allowed_aes=["X"])
    submitter = Submitter(settings, registry=registry, state=DiskState(tmp_path))
    listener = DicomListener(settings, submitter)
    assert listener.receive(b"garbage").Status == CANNOT_UNDERSTAND
    data = dcm.to_bytes(ultrasound())
    assert listener.receive(data, str(uid.CTImageStorage)).Status == DOES_NOT_MATCH
    sr = listener.receive(dcm.to_bytes(dcm.non_image("sr")))
    assert sr.Status == DOES_NOT_MATCH and "not an image" in sr.ErrorComment


def test_cli_lists_the_dicom_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert breastdx_main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("dicom-listener", "dicom-deadletter", "pacs"):
        assert command in out


@pytest.mark.integration
def test_redis_state_claims_once() -> None:
    """The state store the listener and the workers share when BREASTDX_REDIS_URL is set."""
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("no Redis on 127.0.0.1:6379 (scripts/system-deps.sh starts one)")
    prefix = f"breastdx-test:{uid.generate_uid()}:"
    state = RedisState("redis://127.0.0.1:6379/0", prefix=prefix)
    try:
        key = seen_key("1.2.3", "us-tiny@1")
        assert state.claim(key, "pending", 60) and not state.claim(key, "other", 60)
        state.set(key, "job", 60)
        assert state.claimed(key) == "job"
        state.release(key)
        assert state.claimed(key) is None and state.claim(key, "again", 60)
        state.put("header=../x", b"\x00data", 60)
        assert state.get("header=../x") == b"\x00data"
        state.delete("header=../x")
        assert state.get("header=../x") is None
    finally:
        for name in client.scan_iter(f"{prefix}*"):
            client.delete(name)
        client.close()
