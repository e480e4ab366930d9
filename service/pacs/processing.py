"""From a received instance to an analysis job: dedupe, keep the header, submit.

A received instance is claimed under its SOP Instance UID and the model version that serves its
stage (``state.seen_key``); a second copy finds the claim and is not analysed again, unless the
job the claim names has failed (then it is submitted anew). The instance is submitted like an API
request: ``service.jobs.service.submit_analysis(stage, [data], origin="dicom",
after=["dicom-delivery"], model_ref=<pinned name@version>, idempotency_key=<claim key>)``, which
checks it first (decode and stage rules: a bad image fails the C-STORE, not a job later). The
source header is kept in the state store under the image's sha256 and the model version, where
the post-success hook (``delivery.dicom_delivery_hook``) finds it through the job record.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Final

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from models_registry.card import Stage
from models_registry.registry import Registry
from service.config import Settings, get_settings
from service.dicom.identity import to_bytes
from service.errors import JobNotFoundError
from service.inference import pin_model
from service.jobs.backend import service_registry
from service.jobs.service import get_job, submit_analysis
from service.jobs.state import JobRecord, JobState, Origin
from service.pacs.config import DicomSettings
from service.pacs.delivery import HOOK_NAME, header_key
from service.pacs.state import StateStore, open_state, seen_key

logger = logging.getLogger(__name__)

PENDING: Final = "pending"
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Submission:
    """What became of one received instance."""

    key: str
    model_ref: str
    duplicate: bool
    job_id: str | None = None


def header_bytes(header: Dataset) -> bytes:
    """The header (no pixel data) as a small Explicit VR Little Endian file."""
    copy = Dataset(header)
    copy.file_meta = header.file_meta
    copy.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return to_bytes(copy)


class Submitter:
    """Claims received instances and submits them to the job system."""

    def __init__(
        self,
        settings: DicomSettings,
        *,
        service_settings: Settings | None = None,
        registry: Registry | None = None,
        state: StateStore | None = None,
    ) -> None:
        self.settings = settings
        self.service = service_settings or get_settings()
        self.registry = registry or service_registry(self.service)
        self.state = state or open_state(settings.spool_dir, self.service.redis_url)
        self.jobs: deque[str] = deque(maxlen=10_000)  # recent submissions, for wait_idle

    def model_ref(self, stage: Stage) -> str:
        """``name@version`` of the model that serves ``stage`` now."""
        return pin_model(stage, self.registry).ref

    def submit(self, data: bytes, header: Dataset, stage: Stage) -> Submission:
        """Claim and submit one instance; a claimed one is a duplicate (not analysed again).

        Raises:
            BreastdxError: from ``submit_analysis`` (undecodable image, wrong stage, busy).
        """
        ref = self.model_ref(stage)
        sop = str(header.SOPInstanceUID)
        key, idempotency_key = seen_key(sop, ref), seen_key(sop, ref)
        ttl = self.settings.dedupe_ttl_s
        if not self.state.claim(key, PENDING, ttl):
            failed = self._failed_job(key)
            if failed is None or not self.state.claim(key, PENDING, ttl):
                logger.info("%s already analysed by %s: not analysed again", sop, ref)
                return Submission(key, ref, duplicate=True)
            idempotency_key = f"{key}=retry-{failed}"
        try:
            key_of_header = header_key(hashlib.sha256(data).hexdigest(), ref)
            # a job lives at most failure_ttl_s; the hook deletes the header once it ran
            self.state.put(key_of_header, header_bytes(header), self.service.failure_ttl_s)
            record = submit_analysis(
                stage,
                [data],
                settings=self.service,
                model_ref=ref,
                idempotency_key=idempotency_key,
                origin=Origin.DICOM,
                after=[HOOK_NAME],
            )
        except BaseException:
            self.state.release(key)
            raise
        self.state.set(key, record.id, ttl)
        self.jobs.append(record.id)
        logger.info("%s submitted as job %s (%s)", sop, record.id, ref)
        return Submission(key, ref, duplicate=False, job_id=record.id)

    def _failed_job(self, key: str) -> str | None:
        """The id of the failed job a claim names (its claim then released), else None."""
        job_id = self.state.claimed(key)
        if job_id is None or not _JOB_ID.match(job_id):
            return None
        try:
            record = get_job(job_id, settings=self.service)
        except JobNotFoundError:
            return None
        if record.state is not JobState.FAILED:
            return None
        self.state.release(key)
        return job_id

    def _finished(self, job_id: str) -> bool:
        try:
            record: JobRecord = get_job(job_id, settings=self.service)
        except JobNotFoundError:
            return True
        if record.state is JobState.SUCCEEDED:
            return HOOK_NAME in record.hooks
        return record.state is JobState.FAILED

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Wait until the jobs submitted here are final and delivered; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while not all(self._finished(job_id) for job_id in self.jobs):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True
