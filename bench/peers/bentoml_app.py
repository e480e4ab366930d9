"""BentoML serving breastdx's pipeline (``common.Work``):
``bentoml serve bentoml_app:Analyser --port PORT`` from this folder.

``POST /analyse`` with a multipart ``file`` part; one BentoML worker process whose synchronous
API runs on ``BENCH_PARALLEL`` threads (BentoML's ``threads``), no adaptive batching.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bentoml
from common import PARALLEL, Work


@bentoml.service(
    workers=1,
    threads=PARALLEL,
    traffic={"timeout": 60},
    logging={"access": {"enabled": False}},  # breastdx logs no access line either
)
class Analyser:
    def __init__(self) -> None:
        self.work = Work()

    @bentoml.api
    def analyse(self, file: Path) -> dict[str, Any]:
        status, body = self.work.analyse(file.read_bytes())
        if status != 200:
            raise bentoml.exceptions.InvalidArgument(str(body))
        return body
