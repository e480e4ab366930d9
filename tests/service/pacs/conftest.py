"""Fixtures of the DICOM networking tests: a real Orthanc PACS, free ports, isolated settings.

Orthanc runs as a subprocess on free loopback ports with a JSON configuration in a temporary
folder: remote access off, HTTP basic authentication on, the DICOMweb plugin loaded, and DICOM
peers limited to a whitelist (our listener's AE ``BREASTDX`` and the test modality ``TESTMOD``,
both from 127.0.0.1). Orthanc has no bind-address option: it listens on every interface, and
those settings are what keep other hosts out.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset

from tests.service.dicom.conftest import read, referenced_uids
from tests.service.dicom.conftest import registry as registry  # the session's tiny models

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC_AET = "ORTHANC"
LISTENER_AET = "BREASTDX"
MODALITY_AET = "TESTMOD"
USER, PASSWORD = "breastdx", "test-secret-not-for-production"


def free_port() -> int:
    """A TCP port nobody listens on at the moment (loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No ``BREASTDX_DICOM_*`` or Redis settings leak in from the environment."""
    from service.config import get_settings
    from service.pacs.config import get_dicom_settings

    for name in list(os.environ):
        if name.startswith("BREASTDX_DICOM_") or name == "BREASTDX_REDIS_URL":
            monkeypatch.delenv(name)
    get_settings.cache_clear()
    get_dicom_settings.cache_clear()
    yield
    get_settings.cache_clear()
    get_dicom_settings.cache_clear()


@dataclass
class OrthancServer:
    """A running Orthanc: REST/DICOMweb on ``http_url``, DICOM on ``dicom_port``."""

    http_url: str
    dicom_port: int
    folder: Path
    process: subprocess.Popen[bytes]

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http_url}/dicom-web"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.http_url, auth=(USER, PASSWORD), timeout=30.0)

    def upload(self, data: bytes) -> None:
        with self.client() as client:
            client.post("/instances", content=data).raise_for_status()

    def study_instances(self, study_uid: str) -> list[Dataset]:
        """Every instance of a study, parsed (pixel data included)."""
        with self.client() as client:
            found = client.post(
                "/tools/find", json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}}
            ).json()
            return [read(client.get(f"/instances/{oid}/file").content) for oid in found]

    def results_for(self, source_uid: str, study_uid: str) -> dict[str, list[Dataset]]:
        """breastdx results referencing ``source_uid``, by Modality (SEG, SR, OT)."""
        results: dict[str, list[Dataset]] = {}
        for ds in self.study_instances(study_uid):
            if ds.get("Manufacturer") == "breastdx" and source_uid in referenced_uids(ds):
                results.setdefault(str(ds.Modality), []).append(ds)
        return results

    def wait_for_results(
        self, source_uid: str, study_uid: str, timeout_s: float = 60.0, count: int = 3
    ) -> dict[str, list[Dataset]]:
        """The results once ``count`` arrived (3: SEG, SR, SC; 2 when nothing was found)."""
        deadline = time.monotonic() + timeout_s
        while True:
            results = self.results_for(source_uid, study_uid)
            if sum(len(v) for v in results.values()) >= count or time.monotonic() > deadline:
                return results
            time.sleep(0.3)


def _orthanc_config(folder: Path, http_port: int, dicom_port: int) -> dict[str, object]:
    return {
        "Name": "breastdx-test-pacs",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ORTHANC_AET,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomModalities": {
            "breastdx": [LISTENER_AET, "127.0.0.1", free_port()],
            "modality": [MODALITY_AET, "127.0.0.1", free_port()],
        },
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomCheckCalledAet": True,
        "DicomCheckModalityHost": True,
        "SaveJobs": False,
        "HttpCompressionEnabled": False,
    }


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """A fresh Orthanc per test module; skipped with a reason where it is not installed."""
    if not os.path.exists(ORTHANC):
        pytest.skip("Orthanc is not installed (scripts/system-deps.sh installs it)")
    if not DICOMWEB_PLUGIN.is_file():
        pytest.skip(f"the Orthanc DICOMweb plugin {DICOMWEB_PLUGIN} is not installed")
    folder = tmp_path_factory.mktemp("orthanc")
    http_port, dicom_port = free_port(), free_port()
    config = folder / "config.json"
    config.write_text(json.dumps(_orthanc_config(folder, http_port, dicom_port), indent=2))
    log = (folder / "orthanc.log").open("wb")
    process = subprocess.Popen([ORTHANC, str(config)], stdout=log, stderr=subprocess.STDOUT)
    server = OrthancServer(f"http://127.0.0.1:{http_port}", dicom_port, folder, process)
    try:
        _wait_until_up(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _wait_until_up(server: OrthancServer, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    with server.client() as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                log = (server.folder / "orthanc.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"Orthanc exited with {server.process.returncode}:\n{log}")
            try:
                if client.get("/system").status_code == 200:
                    plugins = client.get("/plugins").json()
                    if "dicom-web" not in plugins:
                        pytest.fail(f"Orthanc runs without the DICOMweb plugin: {plugins}")
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    pytest.fail("Orthanc did not answer within 30 s")


def dcmtk(tool: str) -> str:
    """dcmtk's own tool (pynetdicom installs same-named scripts that would shadow it)."""
    path = Path("/usr/bin") / tool
    if not path.exists():
        pytest.skip(f"dcmtk's {path} is not installed (scripts/system-deps.sh installs it)")
    return str(path)
