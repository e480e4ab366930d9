"""Delivery of DICOM results: C-STORE to a destination AE and/or STOW-RS, retried, dead-lettered.

Each configured destination gets every result; a destination that fails is retried with
exponential backoff (``delivery_backoff_s`` doubling up to ``delivery_backoff_max_s``) for
``delivery_attempts`` tries in all, then the results go to the dead letter (``deadletter``) with
the destinations still pending. A PACS files an instance it already holds once (same SOP Instance
UID), so resending a whole set after a partial failure duplicates nothing.

Also here: the job system's post-success hook ``dicom-delivery`` (``register_hook``; the job
system imports this module through ``Settings.hook_modules``).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.presentation import build_context

from breastdx.errors import BreastdxError
from service.config import get_settings
from service.dicom.identity import parse_header
from service.dicom.outputs import ResultObjects, build_outputs, has_finding
from service.inference.result import Analysis
from service.jobs.backend import service_registry
from service.jobs.hooks import StoredArtefact, register_hook
from service.jobs.state import JobRecord
from service.pacs.config import DicomSettings, get_dicom_settings
from service.pacs.deadletter import DeadLetters
from service.pacs.dicomweb import DicomWebClient, DicomWebError
from service.pacs.state import open_state

logger = logging.getLogger(__name__)

HOOK_NAME: Final = "dicom-delivery"
HEADER_PREFIX: Final = "header="  # state store: the source header of a submitted instance
STORE_OK: Final = frozenset({0x0000, 0xB000, 0xB006, 0xB007})  # success and warnings, PS3.4 B.2.3


class DeliveryError(BreastdxError):
    """A destination did not acknowledge the results."""

    code = "dicom_delivery_failed"
    title = "DICOM delivery failed"
    http_status = 502


class Destination(Protocol):
    @property
    def name(self) -> str: ...

    def send(self, instances: Sequence[bytes]) -> None:
        """Store every instance or raise ``DeliveryError``."""
        ...


@dataclass(frozen=True)
class StoreScuDestination:
    """A C-STORE SCP (PS3.4 B.2) reached from our AE title."""

    calling_ae: str
    called_ae: str
    host: str
    port: int
    timeout_s: float = 30.0

    @property
    def name(self) -> str:
        return f"c-store:{self.called_ae}@{self.host}:{self.port}"

    def send(self, instances: Sequence[bytes]) -> None:
        datasets = [pydicom.dcmread(io.BytesIO(data)) for data in instances]
        ae = AE(ae_title=self.calling_ae)
        for attr in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
            setattr(ae, attr, self.timeout_s)
        syntaxes: list[str | UID] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        classes = sorted({str(ds.SOPClassUID) for ds in datasets})
        contexts = [build_context(sop, syntaxes) for sop in classes]
        assoc = ae.associate(self.host, self.port, contexts=contexts, ae_title=self.called_ae)
        if not assoc.is_established:
            raise DeliveryError(f"{self.name}: association not established", destination=self.name)
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = int(status.Status) if status and "Status" in status else None
                if code not in STORE_OK:
                    shown = "no response" if code is None else f"0x{code:04X}"
                    raise DeliveryError(
                        f"{self.name}: C-STORE status {shown}", destination=self.name
                    )
        finally:
            if assoc.is_established:
                assoc.release()


@dataclass(frozen=True)
class StowDestination:
    """A DICOMweb server's STOW-RS endpoint."""

    url: str
    user: str | None = None
    password: str | None = None
    timeout_s: float = 30.0

    @property
    def name(self) -> str:
        return f"stow-rs:{self.url}"

    def send(self, instances: Sequence[bytes]) -> None:
        try:
            with DicomWebClient(
                self.url, user=self.user, password=self.password, timeout_s=self.timeout_s
            ) as client:
                client.store(instances)
        except DicomWebError as exc:
            raise DeliveryError(f"{self.name}: {exc.message}", destination=self.name) from exc


def destinations(settings: DicomSettings) -> list[Destination]:
    """The configured destinations: the AE, then the DICOMweb server."""
    found: list[Destination] = []
    if settings.destination_ae_title and settings.destination_port:
        found.append(
            StoreScuDestination(
                settings.ae_title,
                settings.destination_ae_title,
                settings.destination_host,
                settings.destination_port,
                settings.timeout_s,
            )
        )
    if settings.dicomweb_url:
        password = settings.dicomweb_password
        found.append(
            StowDestination(
                settings.dicomweb_url,
                settings.dicomweb_user,
                password.get_secret_value() if password else None,
                settings.timeout_s,
            )
        )
    return found


@dataclass
class DeliveryReport:
    """What happened to one set of results."""

    delivered: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    attempts: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    dead_letter_id: str | None = None

    @property
    def ok(self) -> bool:
        return not self.pending


def send_with_retries(
    instances: Sequence[bytes],
    targets: Sequence[Destination],
    settings: DicomSettings,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> DeliveryReport:
    """Send to every target, retrying the failing ones with exponential backoff."""
    report = DeliveryReport(pending=[t.name for t in targets])
    pending = list(targets)
    for attempt in range(1, settings.delivery_attempts + 1):
        report.attempts = attempt
        for target in list(pending):
            try:
                target.send(instances)
            except BreastdxError as exc:
                report.errors[target.name] = exc.message
                logger.warning("delivery to %s failed (try %d): %s", target.name, attempt, exc)
                continue
            pending.remove(target)
            report.delivered.append(target.name)
            report.errors.pop(target.name, None)
        report.pending = [t.name for t in pending]
        if not pending or attempt == settings.delivery_attempts:
            break
        delay = settings.delivery_backoff_s * 2 ** (attempt - 1)
        sleep(min(delay, settings.delivery_backoff_max_s))
    return report


def dead_letters(settings: DicomSettings) -> DeadLetters:
    return DeadLetters(settings.spool_dir / "deadletter")


def deliver(
    results: ResultObjects,
    settings: DicomSettings,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> DeliveryReport:
    """Deliver SEG, SR and SC of one instance; undelivered ones go to the dead letter.

    Raises:
        DeliveryError: no destination is configured (nothing could ever deliver them).
    """
    targets = destinations(settings)
    if not targets:
        raise DeliveryError(
            "no destination configured: set BREASTDX_DICOM_DESTINATION_AE_TITLE and _PORT, "
            "or BREASTDX_DICOM_DICOMWEB_URL"
        )
    instances = results.encoded()
    report = send_with_retries(instances, targets, settings, sleep=sleep)
    uid, ref = results.source_sop_instance_uid, results.model_ref
    if report.ok:
        logger.info("results of %s by %s delivered to %s", uid, ref, ", ".join(report.delivered))
        return report
    letter = dead_letters(settings).add(
        instances,
        source_sop_instance_uid=uid,
        model=ref,
        pending=report.pending,
        attempts=report.attempts,
        errors=report.errors,
    )
    report.dead_letter_id = letter.id
    logger.error("results of %s by %s dead-lettered as %s", uid, ref, letter.id)
    return report


def replay(
    letter_id: str,
    settings: DicomSettings,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> DeliveryReport:
    """Send a dead letter again to its pending destinations (all configured ones when none of
    them is configured any more); the record is removed once every one acknowledged."""
    letters = dead_letters(settings)
    letter = letters.get(letter_id)
    configured = destinations(settings)
    if not configured:
        raise DeliveryError("no destination configured to replay to")
    targets = [t for t in configured if t.name in letter.pending] or configured
    report = send_with_retries(letters.instances(letter), targets, settings, sleep=sleep)
    if report.ok:
        letters.remove(letter.id)
        logger.info("dead letter %s replayed to %s", letter.id, ", ".join(report.delivered))
        return report
    letter.pending, letter.errors = report.pending, report.errors
    letter.attempts += report.attempts
    letter.replays += 1
    letters.save(letter)
    report.dead_letter_id = letter.id
    return report


def header_key(image_sha256: str, model_ref: str) -> str:
    """Where the listener keeps the source header of an image submitted for ``model_ref``."""
    return f"{HEADER_PREFIX}{image_sha256}={model_ref}"


@register_hook(HOOK_NAME)
def dicom_delivery_hook(
    record: JobRecord, analyses: list[Analysis], stored: StoredArtefact
) -> None:
    """Post-success hook ``dicom-delivery``: deliver SEG, SR and SC of the job (no SEG where
    nothing was found: the SR states the absence).

    The SEG and SR are the ones the job stored (the API's ``seg.dcm`` and ``sr.dcm``: same SOP
    Instance UIDs in the PACS as through the API); the SC overlay is built here. Runs in the
    job's worker, after the job succeeded, with the ``BREASTDX_DICOM_*`` settings of that
    process. Undeliverable results go to the dead letter (the hook still succeeds).

    Raises:
        DeliveryError: the job has no DICOM source header (not submitted by the listener, or
            the header expired) or no destination is configured.
    """
    settings, service = get_dicom_settings(), get_settings()
    state = open_state(settings.spool_dir, service.redis_url)
    if len(record.inputs) != len(analyses):
        raise DeliveryError(f"{len(analyses)} analyses for {len(record.inputs)} inputs")
    registry = service_registry(service)
    for index, (info, analysis) in enumerate(zip(record.inputs, analyses, strict=True)):
        key = header_key(info.sha256, record.model_ref)
        data = state.get(key)
        if data is None:
            raise DeliveryError(
                f"job {record.id} has no DICOM source header: not from the listener, or expired"
            )
        card = registry.card(analysis.result.model.ref)
        seg_and_sr = _stored_seg_and_sr(stored, index, has_finding(analysis))
        deliver(build_outputs(parse_header(data), analysis, card, seg_and_sr), settings)
        state.delete(key)


def _stored_seg_and_sr(
    stored: StoredArtefact, index: int, found: bool
) -> tuple[Dataset | None, Dataset] | None:
    """The SEG and SR the job stored for input ``index`` (None: none were built, or expired;
    the hook then builds them anew). Without a finding there is no SEG: the SR goes alone."""
    seg, sr = stored("seg", index), stored("sr", index)
    if sr is None or (seg is None and found):
        return None
    return (None if seg is None else pydicom.dcmread(io.BytesIO(seg))), pydicom.dcmread(
        io.BytesIO(sr)
    )
