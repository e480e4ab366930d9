"""The work every peer server does per request: breastdx's own code, nothing re-implemented.

``analyse(data)`` runs ``service.inference.analyse_each`` (decode, frame, stage check,
preprocessing from the card, the ONNX Runtime session, mask post-processing, the malignancy
calibration) on the stage's production model with the service's session options, then encodes
the mask PNG and the display image that ``breastdx serve`` stores with every job, and answers the
result JSON in the shape of breastdx's job (``{"state", "result": [AnalysisResult]}``).
Settings come from the ``BREASTDX_*`` environment (model store, ONNX Runtime threads), the stage
from ``BENCH_STAGE``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a checkout

from breastdx.errors import BreastdxError  # noqa: E402
from models_registry.card import Stage  # noqa: E402
from service.config import Settings  # noqa: E402
from service.inference import Analysis, analyse_each, get_runner  # noqa: E402
from service.inference.pipeline import default_model_ref  # noqa: E402
from service.inference.render import mask_png, overlay_png, pack_display  # noqa: E402
from service.jobs.backend import service_registry  # noqa: E402
from service.jobs.execute import runner_options  # noqa: E402

PARALLEL = int(os.environ.get("BENCH_PARALLEL", "2"))


class Work:
    """One stage's model, loaded and warmed once per server process."""

    def __init__(self, stage: str | None = None) -> None:
        self.stage = Stage(stage or os.environ.get("BENCH_STAGE", Stage.ULTRASOUND.value))
        self.settings = Settings()
        self.registry = service_registry(self.settings)
        self.ref = str(self.registry.resolve(default_model_ref(self.stage, self.registry)))
        get_runner(self.ref, self.registry, runner_options(self.settings, self.stage))

    def analyse(self, data: bytes) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) for one image."""
        outcome = analyse_each(
            self.stage,
            [data],
            registry=self.registry,
            model_ref=self.ref,
            options=runner_options(self.settings, self.stage),
            max_pixels=self.settings.max_pixels,
        )[0]
        if isinstance(outcome, BreastdxError):
            return outcome.http_status, {"state": "failed", "error": outcome.code}
        stored = _stored_images(outcome)
        body = {"state": "succeeded", "result": [outcome.result.model_dump(mode="json")]}
        body["stored_bytes"] = sum(len(png) for png in stored)
        return 200, body


def _stored_images(analysis: Analysis) -> list[bytes]:
    """The two images breastdx stores per job (``service.jobs.execute._images``): the mask PNG
    and the display image (raw pixels, ``pack_display``) or, without one, the overlay PNG."""
    if analysis.display is not None:
        return [mask_png(analysis), pack_display(analysis.display)]
    return [mask_png(analysis), overlay_png(analysis)]
