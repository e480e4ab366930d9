"""API keys: random secrets shown once, stored hashed, managed with ``breastdx api-keys``.

A key is ``bdx_<id>_<secret>``: ``id`` is 12 hex digits (it names the key in lists, logs and
rate limits), ``secret`` 32 random bytes (``secrets.token_urlsafe``). Only a salted SHA-256 of
the secret is stored: with 256 random bits there is nothing for a slow password hash
(scrypt, PBKDF2) to protect, and a request is verified in microseconds. Comparison is constant
time. Keys live in a Redis hash ``<namespace>:apikeys`` when ``redis_url`` is set, else in the
JSON file ``api_keys_file`` (written atomically, mode 0600). Clients send the key as
``X-API-Key: <key>`` or ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

import redis
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from service.config import Settings
from service.errors import (
    InvalidApiKeyError,
    InvalidApiKeyNameError,
    QueueUnavailableError,
    UnknownApiKeyError,
)
from service.jobs.state import utcnow

SCOPES = ("analyses:write", "analyses:read", "models:read")
PREFIX = "bdx"
_TOKEN = re.compile(r"^bdx_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")


class ApiKey(BaseModel):
    """A stored key: everything but the secret, which exists only as ``salt`` + ``sha256``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[0-9a-f]{12}$")
    name: str
    created_at: datetime = Field(default_factory=utcnow)
    scopes: list[str] = Field(default_factory=lambda: list(SCOPES))
    revoked_at: datetime | None = None
    salt: str = Field(description="hex, 16 random bytes")
    sha256: str = Field(description="hex sha256 of salt + secret")

    def public(self) -> dict[str, object]:
        """What lists show: no salt, no hash."""
        return self.model_dump(mode="json", exclude={"salt", "sha256"})


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key, or anonymous where the settings allow it."""

    key_id: str | None
    name: str
    scopes: frozenset[str]


ANONYMOUS = Principal(None, "anonymous", frozenset(SCOPES))


class KeyStore(Protocol):
    def get(self, key_id: str) -> ApiKey | None: ...

    def put(self, key: ApiKey) -> None: ...

    def all(self) -> list[ApiKey]: ...


class RedisKeyStore:
    """Keys in one Redis hash: field = key id, value = the key's JSON."""

    def __init__(self, client: redis.Redis, namespace: str, retry_after_s: int = 5) -> None:
        self.client, self.key, self.retry_after_s = client, f"{namespace}:apikeys", retry_after_s

    def _unavailable(self, exc: redis.RedisError) -> QueueUnavailableError:
        return QueueUnavailableError(
            f"the key store (Redis) cannot be reached: {type(exc).__name__}; retry later",
            retry_after=self.retry_after_s,
        )

    def get(self, key_id: str) -> ApiKey | None:
        try:
            data = self.client.hget(self.key, key_id)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        return None if data is None else ApiKey.model_validate_json(data)

    def put(self, key: ApiKey) -> None:
        try:
            self.client.hset(self.key, key.id, key.model_dump_json())
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc

    def all(self) -> list[ApiKey]:
        try:
            values = self.client.hvals(self.key)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        return sorted((ApiKey.model_validate_json(v) for v in values), key=lambda k: k.created_at)


_KEYS = TypeAdapter(list[ApiKey])


class FileKeyStore:
    """Keys in a JSON file (a list of keys), replaced atomically on every write."""

    _lock = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path

    def all(self) -> list[ApiKey]:
        if not self.path.is_file():
            return []
        return _KEYS.validate_json(self.path.read_bytes())

    def get(self, key_id: str) -> ApiKey | None:
        return next((k for k in self.all() if k.id == key_id), None)

    def put(self, key: ApiKey) -> None:
        with self._lock:
            keys = [k for k in self.all() if k.id != key.id] + [key]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump([k.model_dump(mode="json") for k in keys], handle, indent=2)
            os.replace(temporary, self.path)


def key_store(settings: Settings, client: redis.Redis | None = None) -> KeyStore:
    """Redis when ``redis_url`` is set (``client`` or a new one), else the JSON file."""
    if settings.redis_url:
        from service.jobs.store import redis_client

        return RedisKeyStore(
            client or redis_client(settings.redis_url),
            settings.namespace,
            settings.redis_retry_after_s,
        )
    return FileKeyStore(settings.api_keys_file)


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def create_key(store: KeyStore, name: str, scopes: list[str] | None = None) -> tuple[ApiKey, str]:
    """Make and store a key; returns the record and the key string (shown once, never stored)."""
    if not _NAME.match(name):
        raise InvalidApiKeyNameError(
            "key names are 1-64 characters of letters, digits, space, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    scopes = list(scopes or SCOPES)
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise InvalidApiKeyNameError(f"unknown scope(s) {unknown}; valid scopes: {list(SCOPES)}")
    secret, salt = secrets.token_urlsafe(32), secrets.token_hex(16)
    key = ApiKey(
        id=secrets.token_hex(6), name=name, scopes=scopes, salt=salt, sha256=_digest(salt, secret)
    )
    store.put(key)
    return key, f"{PREFIX}_{key.id}_{secret}"


def revoke_key(store: KeyStore, key_id: str) -> ApiKey:
    """Mark a key revoked (kept for the record); raises :class:`UnknownApiKeyError`."""
    key = store.get(key_id) if re.fullmatch(r"[0-9a-f]{12}", key_id) else None
    if key is None:
        raise UnknownApiKeyError(f"no API key with id {key_id[:32]!r}")
    if key.revoked_at is None:
        key = key.model_copy(update={"revoked_at": utcnow()})
        store.put(key)
    return key


def verify_key(store: KeyStore, token: str) -> ApiKey:
    """The live key ``token`` belongs to; one error for unknown, malformed and revoked keys."""
    match = _TOKEN.match(token.strip())
    key = store.get(match.group(1)) if match else None
    if match is None or key is None or key.revoked_at is not None:
        raise InvalidApiKeyError("the API key is unknown, malformed or revoked")
    if not hmac.compare_digest(key.sha256, _digest(key.salt, match.group(2))):
        raise InvalidApiKeyError("the API key is unknown, malformed or revoked")
    return key


def principal_of(key: ApiKey) -> Principal:
    return Principal(key.id, key.name, frozenset(key.scopes))
