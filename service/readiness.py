"""Readiness checks shared by ``/readyz`` and the CLI."""

from __future__ import annotations

from pydantic import BaseModel

from service.config import Settings


class Check(BaseModel):
    name: str
    ok: bool
    detail: str


class ReadinessReport(BaseModel):
    ready: bool
    checks: list[Check]


def _check_models(settings: Settings) -> Check:
    store = settings.model_store
    onnx_files = sorted(store.rglob("*.onnx")) if store.is_dir() else []
    if not onnx_files:
        return Check(name="models", ok=False, detail=f"no ONNX models in the store at {store}")
    return Check(name="models", ok=True, detail=f"{len(onnx_files)} model file(s) in the store")


def _check_redis(settings: Settings) -> Check:
    if not settings.redis_url:
        return Check(name="queue", ok=True, detail="in-process execution (no Redis configured)")
    import redis

    try:
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        return Check(name="queue", ok=False, detail=f"Redis unreachable: {type(exc).__name__}")
    return Check(name="queue", ok=True, detail="Redis reachable")


def readiness_report(settings: Settings) -> ReadinessReport:
    checks = [_check_models(settings), _check_redis(settings)]
    return ReadinessReport(ready=all(c.ok for c in checks), checks=checks)
