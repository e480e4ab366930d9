"""Pull mode: analyse a study that is already in the PACS, over DICOMweb (PS3.18).

QIDO-RS lists the study's instances; those whose SOP Class a stage takes are retrieved with
WADO-RS (stored transfer syntax), routed (``routing.route``), analysed in process with the
stage's model and answered with SEG, SR and SC stored back by STOW-RS (with the retries and the
dead letter of ``delivery``). An instance already analysed by the same model version is skipped
unless ``force`` is set (same dedupe store as the listener).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from pydicom.dataset import Dataset

from breastdx.errors import BreastdxError
from models_registry.card import Stage
from models_registry.registry import Registry
from service.dicom.identity import parse_header
from service.dicom.outputs import build_outputs
from service.dicom.routing import MANUFACTURER, STORAGE_SOP_CLASSES, route
from service.inference.pipeline import analyse_each, default_model_ref
from service.pacs.config import DicomSettings
from service.pacs.delivery import StowDestination, dead_letters, send_with_retries
from service.pacs.dicomweb import DicomWebClient, InstanceRef
from service.pacs.state import StateStore, seen_key

logger = logging.getLogger(__name__)

Status = Literal["stored", "skipped", "duplicate", "failed", "dead_letter"]


@dataclass
class InstanceReport:
    """One instance of the study: what was done and why (UIDs only, no identifiers)."""

    sop_instance_uid: str
    status: Status
    stage: str | None = None
    model: str | None = None
    reason: str | None = None
    outputs: list[str] = field(default_factory=list)


@dataclass
class StudyReport:
    study_uid: str
    instances: list[InstanceReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(i.status not in ("failed", "dead_letter") for i in self.instances)


class PacsAnalyzer:
    """Pulls, analyses and stores back the eligible instances of one study at a time."""

    def __init__(
        self,
        client: DicomWebClient,
        settings: DicomSettings,
        registry: Registry,
        state: StateStore,
        *,
        user: str | None = None,
        password: str | None = None,
        max_pixels: int,
    ) -> None:
        self.client = client
        self.settings = settings
        self.registry = registry
        self.state = state
        self.stow = StowDestination(client.base_url, user, password, settings.timeout_s)
        self.max_pixels = max_pixels

    def analyze_study(self, study_uid: str, *, force: bool = False) -> StudyReport:
        """Every instance of ``study_uid``: analysed and stored back, or skipped with a reason."""
        report = StudyReport(study_uid)
        for ref in self.client.search_instances(study_uid):
            reason = None
            if ref.sop_class_uid not in STORAGE_SOP_CLASSES:
                reason = f"SOP Class {ref.sop_class_uid} is not an image breastdx takes"
            elif ref.manufacturer.strip().lower() == MANUFACTURER:
                reason = "a breastdx result; analysing it again would loop"
            if reason is not None:
                report.instances.append(
                    InstanceReport(ref.sop_instance_uid, "skipped", reason=reason)
                )
                continue
            report.instances.append(self._one(ref, force))
        return report

    def _one(self, ref: InstanceRef, force: bool) -> InstanceReport:
        uid = ref.sop_instance_uid
        try:
            data = self.client.retrieve_instance(ref)
            header = parse_header(data)
            stage = route(header).stage
        except BreastdxError as exc:
            return InstanceReport(uid, "skipped", reason=f"{exc.code}: {exc.message}")
        try:
            model = self.registry.card(default_model_ref(stage, self.registry)).ref
        except BreastdxError as exc:
            return InstanceReport(uid, "failed", stage.value, reason=exc.message)
        key = seen_key(uid, model)
        if not self.state.claim(key, "pull", self.settings.dedupe_ttl_s) and not force:
            return InstanceReport(uid, "duplicate", stage.value, model, "already analysed")
        try:
            return self._analyse(uid, data, header, stage, model)
        except BaseException:
            self.state.release(key)
            raise

    def _analyse(
        self, uid: str, data: bytes, header: Dataset, stage: Stage, model: str
    ) -> InstanceReport:
        outcome = analyse_each(
            stage, [data], registry=self.registry, model_ref=model, max_pixels=self.max_pixels
        )[0]
        if isinstance(outcome, BreastdxError):
            self.state.release(seen_key(uid, model))
            reason = f"{outcome.code}: {outcome.message}"
            return InstanceReport(uid, "failed", stage.value, model, reason)
        results = build_outputs(header, outcome, self.registry.card(model))
        instances = results.encoded()
        delivery = send_with_retries(instances, [self.stow], self.settings)
        outputs = [str(ds.SOPInstanceUID) for ds in results.datasets]
        if delivery.ok:
            logger.info("%s analysed by %s; results stored", uid, model)
            return InstanceReport(uid, "stored", stage.value, model, outputs=outputs)
        letter = dead_letters(self.settings).add(
            instances,
            source_sop_instance_uid=uid,
            model=model,
            pending=delivery.pending,
            attempts=delivery.attempts,
            errors=delivery.errors,
        )
        reason = f"STOW-RS failed; dead letter {letter.id}"
        return InstanceReport(uid, "dead_letter", stage.value, model, reason, outputs)
