"""What the DICOM integration remembers between receipt and delivery, on disk or in Redis.

Two kinds of entries, both keyed by strings built from SOP Instance UIDs and model references:

- claims (``claim``/``release``): set-if-absent markers with a time to live. A received instance
  is claimed under ``seen:<SOP Instance UID>:<model name@version>``, so the same instance sent
  twice to the same model is analysed once.
- blobs (``put``/``get``): bytes, e.g. a source header that the delivery hook reads back.

Keys never reach the file system as they are: :func:`safe_name` keeps a key that is a plain
UID-like token and replaces anything else by its sha256 (a UID sent by a peer can hold ``../``).
With ``BREASTDX_REDIS_URL`` set, the entries live in Redis (shared by listener and workers).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path
from typing import Final, Protocol

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@=-]{0,127}$")
UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
REDIS_PREFIX: Final = "breastdx:dicom:"


def is_uid(value: str) -> bool:
    """A valid UID (PS3.5 9.1): digit components without leading zeros, at most 64 chars."""
    return len(value) <= 64 and UID_PATTERN.match(value) is not None


def safe_name(key: str) -> str:
    """``key`` as a file name: itself when it is a plain token, else ``h-`` + its sha256."""
    if SAFE_NAME.match(key) and ".." not in key:
        return key
    return "h-" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def seen_key(sop_instance_uid: str, model_ref: str) -> str:
    """The dedupe key of one instance analysed by one model version."""
    return f"seen={sop_instance_uid}={model_ref}"


class StateStore(Protocol):
    """Claims and blobs with a time to live."""

    def claim(self, key: str, value: str, ttl_s: int) -> bool:
        """Set ``key`` to ``value`` unless it is set; True when this call set it."""
        ...

    def claimed(self, key: str) -> str | None:
        """The value of a live claim, or None."""
        ...

    def set(self, key: str, value: str, ttl_s: int) -> None:
        """Set (or replace) the claim ``key``."""
        ...

    def release(self, key: str) -> None: ...

    def put(self, key: str, data: bytes, ttl_s: int) -> None: ...

    def get(self, key: str) -> bytes | None: ...

    def delete(self, key: str) -> None: ...


class DiskState:
    """Entries as files under ``root`` (one host; atomic create for claims)."""

    def __init__(self, root: Path) -> None:
        self.claims = root / "claims"
        self.blobs = root / "blobs"
        self.claims.mkdir(parents=True, exist_ok=True)
        self.blobs.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _expired(path: Path) -> bool:
        try:
            deadline = float(path.stat().st_mtime)
        except FileNotFoundError:
            return True
        return deadline < time.time()

    @staticmethod
    def _write(path: Path, data: bytes, ttl_s: int) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        deadline = time.time() + ttl_s
        os.utime(tmp, (deadline, deadline))  # mtime holds the expiry time
        tmp.replace(path)

    def claim(self, key: str, value: str, ttl_s: int) -> bool:
        path = self.claims / safe_name(key)
        if path.exists() and self._expired(path):
            path.unlink(missing_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(value.encode())
        deadline = time.time() + ttl_s
        os.utime(path, (deadline, deadline))
        return True

    def claimed(self, key: str) -> str | None:
        path = self.claims / safe_name(key)
        if self._expired(path):
            return None
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def set(self, key: str, value: str, ttl_s: int) -> None:
        self._write(self.claims / safe_name(key), value.encode(), ttl_s)

    def release(self, key: str) -> None:
        (self.claims / safe_name(key)).unlink(missing_ok=True)

    def put(self, key: str, data: bytes, ttl_s: int) -> None:
        self._write(self.blobs / safe_name(key), data, ttl_s)

    def get(self, key: str) -> bytes | None:
        path = self.blobs / safe_name(key)
        if self._expired(path):
            return None
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        (self.blobs / safe_name(key)).unlink(missing_ok=True)


class RedisState:
    """Entries as Redis strings with expiry (``SET NX EX`` for claims)."""

    def __init__(self, url: str, prefix: str = REDIS_PREFIX) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.prefix = prefix

    def _key(self, kind: str, key: str) -> str:
        return f"{self.prefix}{kind}:{safe_name(key)}"

    def claim(self, key: str, value: str, ttl_s: int) -> bool:
        return bool(self.client.set(self._key("claim", key), value, nx=True, ex=ttl_s))

    def claimed(self, key: str) -> str | None:
        value = self.client.get(self._key("claim", key))
        return value.decode() if isinstance(value, bytes) else None

    def set(self, key: str, value: str, ttl_s: int) -> None:
        self.client.set(self._key("claim", key), value, ex=ttl_s)

    def release(self, key: str) -> None:
        self.client.delete(self._key("claim", key))

    def put(self, key: str, data: bytes, ttl_s: int) -> None:
        self.client.set(self._key("blob", key), data, ex=ttl_s)

    def get(self, key: str) -> bytes | None:
        value = self.client.get(self._key("blob", key))
        return value if isinstance(value, bytes) else None

    def delete(self, key: str) -> None:
        self.client.delete(self._key("blob", key))


def open_state(spool_dir: Path, redis_url: str | None) -> StateStore:
    """Redis when the service has a Redis URL, else files under ``spool_dir/state``."""
    if redis_url:
        return RedisState(redis_url)
    return DiskState(spool_dir / "state")
