"""A small DICOMweb client (PS3.18): QIDO-RS search, WADO-RS retrieve, STOW-RS store, by httpx.

Every UID that goes into a URL is checked first (a UID from a QIDO answer must not be able to
change the path). Responses are read as ``application/dicom+json`` (PS3.18 F.2) and
``multipart/related; type="application/dicom"`` (PS3.18 8.6.1.2).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import httpx

from breastdx.errors import BreastdxError
from service.pacs.state import is_uid

DICOM_JSON: Final = "application/dicom+json"
MULTIPART_DICOM: Final = 'multipart/related; type="application/dicom"'
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
FAILED_SOP_SEQUENCE: Final = "00081198"


class DicomWebError(BreastdxError):
    """A DICOMweb request failed (network, authentication, or a refusal by the server)."""

    code = "dicomweb_failed"
    title = "DICOMweb request failed"
    http_status = 502


@dataclass(frozen=True)
class InstanceRef:
    """One instance found by QIDO-RS."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    manufacturer: str = ""


def _value(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _checked(uid: str, what: str) -> str:
    if not is_uid(uid):
        raise DicomWebError(f"{what} is not a valid UID; refusing to put it into a URL")
    return uid


def parse_multipart(content_type: str, body: bytes) -> list[bytes]:
    """The parts of a ``multipart/related`` body (RFC 2387), headers dropped."""
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise DicomWebError("the multipart response names no boundary")
    delimiter = b"--" + match.group(1).encode("ascii")
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        _head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        parts.append(payload.removesuffix(b"\r\n"))
    return parts


def encode_multipart(instances: Sequence[bytes]) -> tuple[str, bytes]:
    """``(content type, body)`` of a STOW-RS request holding ``instances``."""
    boundary = f"breastdx-{uuid.uuid4().hex}"
    body = bytearray()
    for data in instances:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
        body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode("ascii")
    return f'{MULTIPART_DICOM}; boundary="{boundary}"', bytes(body)


class DicomWebClient:
    """QIDO/WADO/STOW against one DICOMweb root (``.../dicom-web``), basic auth optional."""

    def __init__(
        self,
        base_url: str,
        *,
        user: str | None = None,
        password: str | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        auth = httpx.BasicAuth(user, password or "") if user else None
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, auth=auth, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> DicomWebClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise DicomWebError(
                f"{method} {self.base_url} failed: {type(exc).__name__}", server=self.base_url
            ) from exc
        if response.status_code in (401, 403):
            raise DicomWebError(
                f"{method} refused by {self.base_url} ({response.status_code}): check the "
                "DICOMweb user and password",
                status=response.status_code,
            )
        return response

    def search_instances(self, study_uid: str) -> list[InstanceRef]:
        """QIDO-RS: every instance of a study (PS3.18 10.6)."""
        study = _checked(study_uid, "the Study Instance UID")
        response = self._request(
            "GET",
            f"/studies/{study}/instances",
            params={"includefield": ["00080060", "0020000E", "00080070"]},
            headers={"Accept": DICOM_JSON},
        )
        if response.status_code == 204:
            return []
        if response.status_code != 200:
            raise DicomWebError(f"QIDO-RS answered {response.status_code}")
        return [
            InstanceRef(
                study_uid=study,
                series_uid=_value(item, "0020000E"),
                sop_instance_uid=_value(item, "00080018"),
                sop_class_uid=_value(item, "00080016"),
                modality=_value(item, "00080060"),
                manufacturer=_value(item, "00080070"),
            )
            for item in response.json()
        ]

    def retrieve_instance(self, ref: InstanceRef) -> bytes:
        """WADO-RS: one instance in its stored transfer syntax (PS3.18 10.4)."""
        path = "/".join(
            [
                "studies",
                _checked(ref.study_uid, "the Study Instance UID"),
                "series",
                _checked(ref.series_uid, "the Series Instance UID"),
                "instances",
                _checked(ref.sop_instance_uid, "the SOP Instance UID"),
            ]
        )
        response = self._request(
            "GET", "/" + path, headers={"Accept": f"{MULTIPART_DICOM}; transfer-syntax=*"}
        )
        if response.status_code != 200:
            raise DicomWebError(f"WADO-RS answered {response.status_code}")
        parts = parse_multipart(response.headers.get("content-type", ""), response.content)
        if not parts:
            raise DicomWebError("WADO-RS answered without a DICOM part")
        return parts[0]

    def store(self, instances: Sequence[bytes]) -> None:
        """STOW-RS: store ``instances`` (PS3.18 10.5); raises unless every one was stored."""
        content_type, body = encode_multipart(instances)
        response = self._request(
            "POST",
            "/studies",
            content=body,
            headers={"Content-Type": content_type, "Accept": DICOM_JSON},
        )
        failed = 0
        if response.content and "json" in response.headers.get("content-type", ""):
            failures = response.json().get(FAILED_SOP_SEQUENCE, {}).get("Value") or []
            failed = len(failures)
        if response.status_code not in (200, 202) or failed:
            raise DicomWebError(
                f"STOW-RS answered {response.status_code}; {failed} of {len(instances)} "
                "instance(s) were not stored",
                status=response.status_code,
            )
