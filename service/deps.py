"""FastAPI dependencies as ``Annotated`` aliases: settings, registry, job store, the caller, the
stage of the URL.

``ApiKeyDep`` authenticates (``X-API-Key: <key>`` or ``Authorization: Bearer <key>``; anonymous
only with ``allow_anonymous``) and counts the request against the caller's rate limit;
``require_scope(...)`` adds the scope check of a route.

The dependencies are ``async``: FastAPI runs a plain ``def`` dependency on a worker thread, a
thread hop per dependency and request. What may wait on I/O (a key look-up, a Redis rate-limit
counter) runs on a thread inside ``_caller``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.concurrency import run_in_threadpool

from models_registry.card import Stage
from models_registry.registry import Registry
from service.config import Settings
from service.errors import AuthenticationRequiredError, InsufficientScopeError
from service.inference import parse_stage
from service.jobs.backend import Backend, get_backend
from service.jobs.store import JobStore
from service.security.keys import ANONYMOUS, Principal, key_store, principal_of, verify_key
from service.security.ratelimit import RateLimiter

logger = logging.getLogger(__name__)


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(_settings)]


async def _backend(settings: SettingsDep) -> Backend:
    return get_backend(settings)


BackendDep = Annotated[Backend, Depends(_backend)]


async def _registry(backend: BackendDep) -> Registry:
    return backend.registry


async def _job_store(backend: BackendDep) -> JobStore:
    return backend.store


RegistryDep = Annotated[Registry, Depends(_registry)]
JobStoreDep = Annotated[JobStore, Depends(_job_store)]


def _presented_key(x_api_key: str | None, authorization: str | None) -> str | None:
    if x_api_key:
        return x_api_key
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return None


async def _caller(request: Request) -> Principal:
    """The caller: its key (``X-API-Key`` or ``Authorization: Bearer``) checked, its request
    counted; settings and headers read from the request itself."""
    settings: Settings = request.app.state.settings
    backend = get_backend(settings)
    headers = request.headers
    token = _presented_key(headers.get("x-api-key"), headers.get("authorization"))
    if token is None and not settings.allow_anonymous:
        raise AuthenticationRequiredError(
            "send an API key as 'X-API-Key: <key>' or 'Authorization: Bearer <key>' "
            "(create one with 'breastdx api-keys create NAME')"
        )
    client = request.client.host if request.client else "unknown"

    def admit() -> Principal:
        """The caller's key checked (a file or Redis read), then its rate limit counted."""
        principal = ANONYMOUS
        if token is not None:
            principal = principal_of(verify_key(key_store(settings, backend.redis), token))
        bucket = f"key:{principal.key_id}" if principal.key_id else f"anon:{client}"
        limiter = RateLimiter(
            backend.store.kv,
            settings.namespace,
            settings.rate_limit_requests,
            settings.rate_limit_window_s,
        )
        limiter.hit(bucket)
        return principal

    # anonymous in process: a counter in memory, no hop to a thread
    principal = await (backend.call(admit) if token is None else run_in_threadpool(admit))
    request.state.api_key_id = principal.key_id
    return principal


ApiKeyDep = Annotated[Principal, Depends(_caller)]


def require_scope(scope: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that lets through callers whose key has ``scope``."""

    async def check(principal: ApiKeyDep) -> Principal:
        if scope not in principal.scopes:
            raise InsufficientScopeError(
                f"this API key lacks the scope {scope!r}", required_scope=scope
            )
        return principal

    return check


CanSubmit = Annotated[Principal, Depends(require_scope("analyses:write"))]
CanRead = Annotated[Principal, Depends(require_scope("analyses:read"))]
CanReadModels = Annotated[Principal, Depends(require_scope("models:read"))]


async def _stage(
    stage: Annotated[str, Path(description=f"one of {', '.join(s.value for s in Stage)}")],
) -> Stage:
    return parse_stage(stage)  # 404 listing the valid stages, before the body is read


StageDep = Annotated[Stage, Depends(_stage)]
