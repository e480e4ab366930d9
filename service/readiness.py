"""Readiness checks shared by ``/readyz`` and the CLI.

- ``models``: every stage's served model resolves, and each served version passes the
  registry's verify (card, preprocessing, sha256, ONNX Runtime load, input/output contract);
  a version verified once is not verified again by this process. In process, each is also
  opened on its runtime (``BREASTDX_RUNTIME``); the app does this once at start in a
  background :class:`Warmup` (under ``auto``: the parity gate and the timing), and the check
  is not ready until that has finished.
- ``queue``: Redis answers (queued mode), or in-process execution.
- ``workers``: at least one live ``breastdx worker`` listens on the queue of each stage that
  has a model (its heartbeat key, renewed every few seconds: ``service.heartbeat``), queued
  mode only.
"""

from __future__ import annotations

import logging
import threading

import redis
from pydantic import BaseModel

from models_registry.card import Stage
from models_registry.errors import RegistryError
from models_registry.registry import Registry
from service.config import Settings
from service.heartbeat import live_heartbeats
from service.inference import NoModelForStageError, pin_model
from service.jobs.backend import service_registry
from service.jobs.store import redis_client

logger = logging.getLogger(__name__)

WARMING = (
    "warming up: opening each served model on its runtime (BREASTDX_RUNTIME; auto runs the "
    "parity gate and times the runtimes that pass)"
)
_VERIFIED: set[tuple[str, str]] = set()  # (ref, sha256) verified by this process
_LOCK = threading.Lock()


class Check(BaseModel):
    name: str
    ok: bool
    detail: str


class ReadinessReport(BaseModel):
    ready: bool
    checks: list[Check]


def _verified(registry: Registry, ref: str, sha256: str) -> str | None:
    """None when ``ref`` verifies (cached per process), else the failed checks."""
    with _LOCK:
        if (ref, sha256) in _VERIFIED:
            return None
    report = registry.verify(ref)[0]
    if not report.ok:
        return "; ".join(f"{c.name}: {c.detail}" for c in report.checks if not c.ok)
    with _LOCK:
        _VERIFIED.add((ref, sha256))
    return None


def served_stages(registry: Registry) -> tuple[dict[Stage, str], list[str]]:
    """``({stage: name@version}, problems)`` for the stages that have a model."""
    served, problems = {}, []
    for stage in Stage:
        try:
            card = pin_model(stage, registry, None)
        except NoModelForStageError:
            continue
        except RegistryError as exc:
            problems.append(f"{stage.value}: {exc.message}")
            continue
        failure = _verified(registry, card.ref, card.onnx.sha256)
        if failure:
            problems.append(f"{card.ref}: {failure}")
        served[stage] = card.ref
    return served, problems


def _load_in_process(
    settings: Settings, registry: Registry, served: dict[Stage, str], *, warm: bool = False
) -> tuple[dict[Stage, str], list[str]]:
    """In-process mode: load each served model on its runtime (``BREASTDX_RUNTIME``), so that a
    runtime that is missing, not allowed or fails the parity gate is a readiness problem;
    ``warm``: also run one zero batch through each."""
    from service.inference.runner import get_runner  # the API process runs models only here
    from service.jobs.execute import runner_options

    labels, problems = {}, []
    for stage, ref in served.items():
        try:
            runner = get_runner(ref, registry, runner_options(settings, stage))
            if warm:
                runner.warm()
        except RegistryError as exc:
            problems.append(f"{ref}: {exc.message}")
            continue
        labels[stage] = f"{ref} on {runner.session.label}"
    return labels, problems


def _check_models(settings: Settings, *, warm: bool = False) -> tuple[Check, list[Stage]]:
    registry = service_registry(settings)
    store = registry.stores[0].uri
    served, problems = served_stages(registry)
    if not served and not problems:
        return Check(name="models", ok=False, detail=f"no ONNX models in the store at {store}"), []
    if not problems and not settings.queued:
        served, problems = _load_in_process(settings, registry, served, warm=warm)
    if problems:
        return Check(name="models", ok=False, detail="; ".join(problems)), list(served)
    refs = ", ".join(f"{stage.value}: {ref}" for stage, ref in served.items())
    return Check(name="models", ok=True, detail=f"verified {refs}"), list(served)


def _check_redis(settings: Settings) -> Check:
    if not settings.redis_url:
        return Check(name="queue", ok=True, detail="in-process execution (no Redis configured)")
    try:
        client = redis_client(settings.redis_url, timeout_s=1)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        return Check(name="queue", ok=False, detail=f"Redis unreachable: {type(exc).__name__}")
    return Check(name="queue", ok=True, detail="Redis reachable")


def _check_workers(settings: Settings, stages: list[Stage]) -> Check:
    if not settings.redis_url:
        return Check(name="workers", ok=True, detail="in-process thread pool")
    client = redis_client(settings.redis_url, timeout_s=1)
    try:
        counts = live_heartbeats(settings, client)
    finally:
        client.close()
    missing = [stage.value for stage in stages if counts[stage] == 0]
    detail = "workers per stage queue: " + ", ".join(f"{s.value}: {counts[s]}" for s in Stage)
    if missing:
        return Check(
            name="workers", ok=False, detail=f"no worker for {', '.join(missing)}; {detail}"
        )
    return Check(name="workers", ok=True, detail=detail)


class Warmup:
    """The in-process app's start: the models check run once in a background thread, each
    served model opened on its runtime and warmed, so that no request pays for it. Queued, the
    workers warm their own models before they take jobs (``service.worker.warm_up``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="breastdx-warmup", daemon=True)

    def start(self) -> Warmup:
        self._thread.start()
        return self

    def join(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the warm-up to end (the app's shutdown)."""
        self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            check, _ = _check_models(self.settings, warm=True)
            log = logger.info if check.ok else logger.error
            log("models warmed" if check.ok else "models not ready", extra={"detail": check.detail})
        except Exception:  # /readyz runs the check again and reports it
            logger.exception("model warm-up failed")
        finally:
            self.finished.set()


def readiness_report(settings: Settings, warmup: Warmup | None = None) -> ReadinessReport:
    """The checks; ``warmup`` (the app's, in process): models are not ready until it is done."""
    stages: list[Stage] = []
    if warmup is not None and not warmup.finished.is_set():
        models = Check(name="models", ok=False, detail=WARMING)
    else:
        models, stages = _check_models(settings)
    checks = [models, _check_redis(settings)]
    if checks[-1].ok:
        checks.append(_check_workers(settings, stages))
    return ReadinessReport(ready=all(c.ok for c in checks), checks=checks)
