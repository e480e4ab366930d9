"""The DICOM listener: a Storage SCP (PS3.4 B.2) and Verification SCP (PS3.4 A.4), pynetdicom.

Associations are accepted only from the calling AE titles in ``allowed_aes`` and only when they
call our AE title (anything else is rejected at association, A-ASSOCIATE-RJ reason 3 or 7). The
presentation contexts are the storage SOP Classes that ``routing`` knows, each with every
transfer syntax for which pydicom has a working decoder (native, deflated, JPEG, JPEG-LS,
JPEG 2000, HTJ2K, RLE with the installed plugins).

Each C-STORE is checked before it is answered: parsed, routed, then claimed and submitted
(``processing``), where the job system's submission decodes the image and runs the stage rules.
Handlers answer with DICOM status codes (PS3.4 B.2.3) and an Error Comment, never by raising:

- 0x0000 success (also for an instance already analysed by the same model: not analysed again);
- 0xA900 the dataset does not match its SOP Class, no stage analyses it (routing refusal), it
  holds no image, or the image fails the stage's rules;
- 0xC000 cannot understand: unparsable, undecodable or truncated pixel data;
- 0xA700 out of resources: the job system is busy or unreachable, or no model serves the stage.
"""

from __future__ import annotations

import io
import logging
import re
from typing import Any, Final

import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from breastdx.errors import BreastdxError
from imaging.errors import ImagingError, NotAnImageError
from service.dicom.identity import SourceHeaderError, check_uids
from service.dicom.routing import STORAGE_SOP_CLASSES, UnroutableError, route
from service.pacs.config import DicomSettings
from service.pacs.processing import Submitter

logger = logging.getLogger(__name__)

SUCCESS: Final = 0x0000
OUT_OF_RESOURCES: Final = 0xA700
DOES_NOT_MATCH: Final = 0xA900
CANNOT_UNDERSTAND: Final = 0xC000
_PRINTABLE = re.compile(r"[^\x20-\x5b\x5d-\x7e]")  # LO: no control characters, no backslash


def decodable_transfer_syntaxes() -> list[str]:
    """Every transfer syntax pydicom can decode with the plugins installed here."""
    found = []
    for uid in AllTransferSyntaxes:
        try:
            if get_decoder(uid).is_available:
                found.append(str(uid))
        except NotImplementedError:
            continue
    return found


def status(code: int, comment: str | None = None) -> Dataset:
    """A C-STORE response status with an Error Comment (0000,0902), LO: 64 characters."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = _PRINTABLE.sub(" ", comment)[:64]
    return ds


class DicomListener:
    """The Storage/Verification SCP; :meth:`receive` is the C-STORE logic without a network."""

    def __init__(self, settings: DicomSettings, submitter: Submitter) -> None:
        if not settings.allowed_aes:
            raise ValueError(
                "no calling AE title is allowed: set --allowed-ae or BREASTDX_DICOM_ALLOWED_AES"
            )
        self.settings = settings
        self.submitter = submitter
        self.ae = self._application_entity()
        self.server: Any = None

    def _application_entity(self) -> AE:
        ae = AE(ae_title=self.settings.ae_title)
        ae.require_calling_aet = list(self.settings.allowed_aes)
        ae.require_called_aet = True
        for attr in ("acse_timeout", "dimse_timeout", "network_timeout"):
            setattr(ae, attr, self.settings.timeout_s)
        ae.add_supported_context(Verification)
        syntaxes = decodable_transfer_syntaxes()
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, syntaxes)
        return ae

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self.server is None:
            return self.settings.port
        return int(self.server.server_address[1])

    def start(self, *, block: bool = False) -> None:
        """Listen on ``host:port``; returns at once unless ``block``."""
        handlers: list[Any] = [(evt.EVT_C_ECHO, self._on_echo), (evt.EVT_C_STORE, self._on_store)]
        address = (self.settings.host, self.settings.port)
        if block:
            self._announce(self.settings.port)
            self.ae.start_server(address, block=True, evt_handlers=handlers)
        else:
            self.server = self.ae.start_server(address, block=False, evt_handlers=handlers)
            self._announce(self.port)

    def _announce(self, port: int) -> None:
        logger.info(
            "DICOM listener %s on %s:%d, calling AEs %s",
            self.settings.ae_title,
            self.settings.host,
            port,
            ", ".join(self.settings.allowed_aes),
        )

    def stop(self) -> None:
        """Stop accepting associations, then wait for in-process analyses."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        self.ae.shutdown()

    def _on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def _on_store(self, event: evt.Event) -> Dataset:
        try:
            data = event.encoded_dataset(include_meta=True)
            context_class = str(event.context.abstract_syntax)
        except Exception as exc:  # a handler must answer, never raise
            logger.warning("C-STORE request unreadable: %s", type(exc).__name__)
            return status(CANNOT_UNDERSTAND, "the dataset could not be read")
        return self.receive(data, context_class)

    def receive(self, data: bytes, context_class: str | None = None) -> Dataset:
        """Check and submit one received instance; returns its C-STORE status."""
        try:
            return self._receive(data, context_class)
        except Exception as exc:  # a handler must answer, never raise
            logger.exception("unexpected error on C-STORE")
            return status(CANNOT_UNDERSTAND, f"internal error ({type(exc).__name__})")

    @staticmethod
    def _refused(sop: str, exc: BreastdxError) -> Dataset:
        """The status of a submission refused by the job system (PS3.4 B.2.3)."""
        logger.info("%s refused at submission: %s", sop, exc.code)
        comment = f"{exc.code}: {exc.message}"
        if exc.http_status >= 500:
            return status(OUT_OF_RESOURCES, comment)
        if isinstance(exc, ImagingError) and not isinstance(exc, NotAnImageError):
            return status(CANNOT_UNDERSTAND, comment)
        return status(DOES_NOT_MATCH, comment)

    def _receive(self, data: bytes, context_class: str | None) -> Dataset:
        try:
            header = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
            sop = str(header.get("SOPInstanceUID", "") or "")
            sop_class = str(header.get("SOPClassUID", "") or "")
        except Exception as exc:  # pydicom raises many types on malformed input
            logger.warning("unparsable dataset received: %s", type(exc).__name__)
            return status(CANNOT_UNDERSTAND, "the dataset does not parse as DICOM")
        if not sop or not sop_class:
            return status(CANNOT_UNDERSTAND, "the dataset has no SOP Class or Instance UID")
        if context_class and sop_class != context_class:
            return status(DOES_NOT_MATCH, "SOP Class UID differs from the presentation context")
        try:
            check_uids(header)
            chosen = route(header)
        except (UnroutableError, SourceHeaderError) as exc:
            logger.info("%s refused: %s", sop, exc.message)
            return status(DOES_NOT_MATCH, exc.message)
        try:
            submission = self.submitter.submit(data, header, chosen.stage)
        except BreastdxError as exc:
            return self._refused(sop, exc)
        except OSError as exc:  # the state store's disk
            logger.error("%s not submitted: %s", sop, type(exc).__name__)
            return status(OUT_OF_RESOURCES, "the analysis could not be queued")
        logger.info(
            "%s -> %s (%s)%s",
            sop,
            chosen.stage.value,
            submission.model_ref,
            ", duplicate" if submission.duplicate else "",
        )
        return status(SUCCESS)
