"""Run the service's inference path over the cases of a data set, resumably.

Cases go through ``service.inference.analyse_each`` (what ``breastdx predict`` and the API run)
in chunks; each scored case is appended at once to ``<out>/cache/<model sha256>-<key>.jsonl``
(another runtime than ONNX Runtime: ``<sha256>-<key>.<runtime>.jsonl``), keyed by data set and
case id, so an interrupted run picks up where it stopped and a re-run with the same model file
and runtime scores nothing twice. ``key`` (:func:`scoring_key`) covers what else decides a
record: the card's input, outputs, thresholds and calibration (two versions of one file with
other thresholds never share records) and ``RECORD_FORMAT``. A case whose image or truth
cannot be used is skipped with a message naming the file; skipped cases are not cached (a re-run
tries them again).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from breastdx.errors import BreastdxError
from evaluation.cases import Case
from evaluation.score import score_case
from models_registry.card import ModelCard, Runtime, Stage
from models_registry.registry import Registry
from service.inference import Analysis, RunnerOptions, analyse_each

logger = logging.getLogger(__name__)
CHUNK = 16
RECORD_FORMAT = 2  # 2: candidates below the presence threshold; bump when a record changes


def scoring_key(card: ModelCard) -> str:
    """12 hex digits naming what, besides the ONNX file and the runtime, decides a case's
    record: the card's input, outputs, thresholds and calibration, and ``RECORD_FORMAT``."""
    facts = card.model_dump(mode="json", include={"input", "outputs", "thresholds", "calibration"})
    facts["record_format"] = RECORD_FORMAT
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Skipped:
    """A case left out, and why (the message names the file)."""

    id: str
    dataset: str
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "dataset": self.dataset, "code": self.code, "message": self.message}


class CaseCache:
    """Scored cases of one model file, card settings (``key``) and runtime, one JSON line each,
    appended as they are scored: ``cache/<sha256>-<key>.jsonl`` on ONNX Runtime,
    ``cache/<sha256>-<key>.<runtime>.jsonl`` on another (a runtime's figures never mix with
    another's)."""

    def __init__(
        self, folder: Path, model_sha256: str, key: str, runtime: Runtime = Runtime.ONNXRUNTIME
    ) -> None:
        suffix = "" if runtime is Runtime.ONNXRUNTIME else f".{runtime.value}"
        self.path = folder / "cache" / f"{model_sha256}-{key}{suffix}.jsonl"
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                    self.records[(record["dataset"], record["id"])] = record
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by an interruption: that case runs again

    def get(self, case: Case) -> dict[str, Any] | None:
        return self.records.get((case.dataset, case.id))

    def add(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self.records[(record["dataset"], record["id"])] = record


class Progress:
    """A bar with an ETA on a terminal; otherwise a plain line every tenth of the way."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total, self.label, self.done = total, label, 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self._next_line = 0
        self._fresh = 0  # cases computed in this run (cached ones take no time)

    def advance(self, count: int, fresh: int) -> None:
        """``count`` cases done, ``fresh`` of them computed now (cached ones cost nothing)."""
        self.done += count
        elapsed = time.monotonic() - self.start
        self._fresh += fresh
        rate = elapsed / self._fresh if self._fresh else 0.0
        left = self.total - self.done
        eta = time.strftime("%H:%M:%S", time.gmtime(rate * left)) if rate else "--:--:--"
        if self.tty:
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total} ETA {eta}")
            if self.done >= self.total:
                self.stream.write("\n")
        elif self.done >= self._next_line or self.done >= self.total:
            self.stream.write(f"{self.label}: {self.done}/{self.total} cases, ETA {eta}\n")
            self._next_line = self.done + max(1, self.total // 10)
        self.stream.flush()


def _chunks(items: Sequence[Case], size: int) -> Iterator[Sequence[Case]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _score(case: Case, outcome: Analysis | BreastdxError) -> dict[str, Any] | Skipped:
    if isinstance(outcome, BreastdxError):
        return Skipped(case.id, case.dataset, outcome.code, f"{case.image_path}: {outcome.message}")
    try:
        return score_case(case, outcome)
    except BreastdxError as exc:
        return Skipped(case.id, case.dataset, exc.code, exc.message)
    except OSError as exc:
        return Skipped(case.id, case.dataset, "unreadable_file", f"{exc.filename}: {exc.strerror}")


def evaluate_cases(
    cases: Sequence[Case],
    *,
    stage: Stage,
    registry: Registry,
    model_ref: str,
    cache: CaseCache,
    progress: Progress,
    options: RunnerOptions | None = None,
) -> tuple[list[dict[str, Any]], list[Skipped]]:
    """Records of every usable case (cached or computed now) and the skipped cases."""
    records: dict[str, dict[str, Any]] = {}
    skipped: list[Skipped] = []
    for chunk in _chunks(cases, CHUNK):
        todo = [case for case in chunk if cache.get(case) is None]
        for case in chunk:
            if (found := cache.get(case)) is not None:
                records[case.id] = found
        missing = [c for c in todo if not c.image_path.is_file()]
        for case in missing:
            skipped.append(
                Skipped(
                    case.id, case.dataset, "missing_file", f"{case.image_path}: no such image file"
                )
            )
        runnable = [c for c in todo if c.image_path.is_file()]
        outcomes = (
            analyse_each(
                stage,
                [c.image_path for c in runnable],
                registry=registry,
                model_ref=model_ref,
                options=options,
            )
            if runnable
            else []
        )
        for case, outcome in zip(runnable, outcomes, strict=True):
            scored = _score(case, outcome)
            if isinstance(scored, Skipped):
                logger.warning("case skipped: %s", scored.message)
                skipped.append(scored)
            else:
                cache.add(scored)
                records[case.id] = scored
        progress.advance(len(chunk), len(todo))
    ordered = [records[c.id] for c in cases if c.id in records]
    return ordered, skipped
