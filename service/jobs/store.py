"""The job store: job records, uploaded bytes and result artefacts, each with a TTL.

One :class:`JobStore` over a small key-value interface with two implementations: Redis (queued
mode; the API and every worker share it) and process memory (in-process mode). Keys, under the
settings' ``namespace`` (``breastdx`` by default)::

    <ns>:job:<id>                  the JobRecord (JSON)        queued/running: failure_ttl_s
                                                                succeeded: result_ttl_s
                                                                failed: failure_ttl_s
    <ns>:job:<id>:input:<i>        uploaded bytes               upload_ttl_s; deleted when the
                                                                job ends (success or failure)
    <ns>:job:<id>:results          [AnalysisResult JSON, ...]   result_ttl_s
    <ns>:job:<id>:mask:<i>         mask PNG                     result_ttl_s
    <ns>:job:<id>:overlay:<i>      overlay PNG                  result_ttl_s; drawn on the
                                                                first GET
    <ns>:job:<id>:display:<i>      the image the overlay        result_ttl_s; the overlay is
                                   is drawn on (raw pixels      drawn from it on request
                                   up to 4 MB, else PNG:
                                   ``render.pack_display``)
    <ns>:job:<id>:seg:<i>          DICOM SEG (file format)      result_ttl_s; DICOM inputs only
    <ns>:job:<id>:sr:<i>           DICOM SR (file format)       result_ttl_s; DICOM inputs only
    <ns>:job:<id>:dicom_error:<i>  why no SEG/SR was built      result_ttl_s; JSON {code, message}
    <ns>:job:<id>:lease            the running worker's lease   lease_ttl_s, renewed while it runs
    <ns>:idem:<scope>:<sha256>     idempotency key -> job id    failure_ttl_s

and the pub/sub channel ``<ns>:job-final``: the id of each job saved in a final state, published
with the record (``service.jobs.notify`` wakes the requests that wait on it).

A Redis that cannot be reached raises :class:`QueueUnavailableError` (503 with Retry-After).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import redis

from service.config import Settings
from service.errors import QueueUnavailableError, UploadExpiredError
from service.jobs.notify import final_channel
from service.jobs.state import JobRecord, JobState

ImageKind = Literal["mask", "overlay"]
Writes = Sequence[tuple[Mapping[str, bytes], int]]  # groups of items, each with its TTL (s)
DicomKind = Literal["seg", "sr"]
ArtefactKind = Literal[ImageKind, DicomKind, "display", "dicom_error"]


class KeyValue(Protocol):
    """The few operations the store, the rate limiter and the leases need."""

    def get(self, key: str) -> bytes | None: ...

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys`` in order (None where absent): one round trip."""

    def write(
        self,
        groups: Writes,
        delete: Sequence[str] = (),
        announce: tuple[str, str] | None = None,
    ) -> None:
        """One atomic step (one Redis transaction, one round trip): every group's items set
        with its TTL, then ``delete`` removed, then ``announce`` = (channel, message) published
        (heard in process through ``MemoryKeyValue.subscribe``, from Redis through
        ``service.jobs.notify.RedisListener``)."""

    def set_nx(self, key: str, value: bytes, ttl_s: int) -> bool: ...

    def delete(self, *keys: str) -> None: ...

    def incr(self, key: str, ttl_s: int) -> int: ...

    def ttl(self, key: str) -> int | None: ...

    def ping(self) -> None: ...


PURGE_INTERVAL_S = 1.0


class MemoryKeyValue:
    """Process memory with lazy expiry (in-process mode and tests)."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()
        self._subscribers: dict[str, list[Callable[[str], None]]] = {}
        self._next_purge = 0.0

    def _live(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= time.monotonic():
            del self._data[key]
            return None
        return item[0]

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._live(key)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._lock:
            return [self._live(key) for key in keys]

    def write(
        self,
        groups: Writes,
        delete: Sequence[str] = (),
        announce: tuple[str, str] | None = None,
    ) -> None:
        now = time.monotonic()
        with self._lock:
            for items, ttl_s in groups:
                self._data.update({key: (value, now + ttl_s) for key, value in items.items()})
            for key in delete:
                self._data.pop(key, None)
            self._purge()
            callbacks = list(self._subscribers.get(announce[0], ())) if announce else []
        for callback in callbacks:
            callback(announce[1] if announce else "")

    def subscribe(self, channel: str, callback: Callable[[str], None]) -> None:
        with self._lock:
            self._subscribers.setdefault(channel, []).append(callback)

    def set_nx(self, key: str, value: bytes, ttl_s: int) -> bool:
        with self._lock:
            if self._live(key) is not None:
                return False
            self._data[key] = (value, time.monotonic() + ttl_s)
            return True

    def delete(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._data.pop(key, None)

    def incr(self, key: str, ttl_s: int) -> int:
        with self._lock:
            current = self._live(key)
            if current is None:
                self._data[key] = (b"1", time.monotonic() + ttl_s)
                return 1
            value = int(current) + 1
            self._data[key] = (str(value).encode(), self._data[key][1])
            return value

    def ttl(self, key: str) -> int | None:
        with self._lock:
            if self._live(key) is None:
                return None
            return max(0, round(self._data[key][1] - time.monotonic()))

    def ping(self) -> None:
        return None

    def _purge(self) -> None:
        """Drop expired entries, at most once a second (a scan of every key)."""
        now = time.monotonic()
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_INTERVAL_S
        for key in [k for k, (_, expires) in self._data.items() if expires <= now]:
            del self._data[key]


class RedisKeyValue:
    """Redis; every Redis error becomes :class:`QueueUnavailableError`."""

    def __init__(self, client: redis.Redis, retry_after_s: int = 5) -> None:
        self.client = client
        self.retry_after_s = retry_after_s

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as exc:
            raise QueueUnavailableError(
                f"the job queue (Redis) cannot be reached: {type(exc).__name__}; retry later",
                retry_after=self.retry_after_s,
            ) from exc

    def get(self, key: str) -> bytes | None:
        with self._errors():
            return _as_bytes(self.client.get(key))

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        with self._errors():
            return [_as_bytes(value) for value in self.client.mget(keys)]

    def write(
        self,
        groups: Writes,
        delete: Sequence[str] = (),
        announce: tuple[str, str] | None = None,
    ) -> None:
        with self._errors(), self.client.pipeline(transaction=True) as pipe:
            for items, ttl_s in groups:
                for key, value in items.items():
                    pipe.set(key, value, ex=ttl_s)
            if delete:
                pipe.delete(*delete)
            if announce is not None:
                pipe.publish(*announce)
            pipe.execute()

    def set_nx(self, key: str, value: bytes, ttl_s: int) -> bool:
        with self._errors():
            return bool(self.client.set(key, value, ex=ttl_s, nx=True))

    def delete(self, *keys: str) -> None:
        if keys:
            with self._errors():
                self.client.delete(*keys)

    def incr(self, key: str, ttl_s: int) -> int:
        with self._errors(), self.client.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, ttl_s, nx=True)
            count, _ = pipe.execute()
            return int(count)

    def ttl(self, key: str) -> int | None:
        with self._errors():
            value = int(self.client.ttl(key))
        return None if value < 0 else value

    def ping(self) -> None:
        with self._errors():
            self.client.ping()


def _as_bytes(value: Any) -> bytes | None:
    return value if value is None or isinstance(value, bytes) else str(value).encode()


def redis_client(url: str, *, timeout_s: float = 5.0) -> redis.Redis:
    """A client for ``url`` with short connect and read timeouts (the API must answer fast)."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, health_check_interval=30
    )


@dataclass(frozen=True)
class Ttls:
    """How long each kind of entry lives, in seconds."""

    result: int
    failure: int
    upload: int
    lease: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Ttls:
        return cls(
            settings.result_ttl_s,
            settings.failure_ttl_s,
            settings.upload_ttl_s,
            settings.lease_ttl_s,
        )

    def record(self, state: JobState) -> int:
        return self.result if state is JobState.SUCCEEDED else self.failure


class JobStore:
    """Job records, uploads and artefacts under one namespace of a :class:`KeyValue`."""

    def __init__(self, kv: KeyValue, namespace: str, ttls: Ttls) -> None:
        self.kv = kv
        self.namespace = namespace
        self.ttls = ttls

    def key(self, job_id: str, *parts: str | int) -> str:
        return ":".join([self.namespace, "job", job_id, *map(str, parts)])

    def create(self, record: JobRecord, inputs: Sequence[bytes]) -> None:
        """Store the uploads and the record in one write, so a record never lacks its inputs."""
        uploads = {self.key(record.id, "input", i): data for i, data in enumerate(inputs)}
        self.kv.write([(uploads, self.ttls.upload), self._record_item(record)])

    def get(self, job_id: str) -> JobRecord | None:
        data = self.kv.get(self.key(job_id))
        return None if data is None else JobRecord.model_validate_json(data)

    def get_with_results(self, job_id: str) -> tuple[JobRecord | None, bytes | None]:
        """The record and the stored results' JSON (None where absent), in one read."""
        data, results = self.kv.get_many([self.key(job_id), self.key(job_id, "results")])
        return None if data is None else JobRecord.model_validate_json(data), results

    @property
    def final_channel(self) -> str:
        """Where the id of every job that reaches a final state is announced."""
        return final_channel(self.namespace)

    def _record_item(self, record: JobRecord) -> tuple[dict[str, bytes], int]:
        return {self.key(record.id): record.model_dump_json().encode()}, self.ttls.record(
            record.state
        )

    def _announce(self, record: JobRecord) -> tuple[str, str] | None:
        return (self.final_channel, record.id) if record.state.final else None

    def save(self, record: JobRecord) -> None:
        """Store the record; a final one is announced on :attr:`final_channel` with it."""
        self.kv.write([self._record_item(record)], announce=self._announce(record))

    def start(self, record: JobRecord, holder: str) -> None:
        """A worker takes the job: ``holder``'s lease and the (running) record, one write."""
        lease = {self.key(record.id, "lease"): holder.encode()}
        self.kv.write([(lease, self.ttls.lease), self._record_item(record)])

    def finish(
        self,
        record: JobRecord,
        results: Sequence[str],
        images: Sequence[Mapping[ArtefactKind, bytes]],
        extra: Sequence[Mapping[ArtefactKind, bytes]] = (),
    ) -> None:
        """A succeeded attempt in one write: the results and artefacts, the final record
        (announced), the uploads and the lease gone."""
        gone = [*self._input_keys(record), self.key(record.id, "lease")]
        groups = [self._results_item(record.id, results, images, extra), self._record_item(record)]
        self.kv.write(groups, delete=gone, announce=self._announce(record))

    def inputs(self, record: JobRecord) -> list[bytes]:
        """The uploaded bytes, in order; raises :class:`UploadExpiredError` if any is gone."""
        found = self.kv.get_many(self._input_keys(record))
        for i, data in enumerate(found):
            if data is None:
                raise UploadExpiredError(
                    f"input {i} of job {record.id} is gone: uploads live {self.ttls.upload} s",
                    input_index=i,
                )
        return [data for data in found if data is not None]

    def discard(self, record: JobRecord) -> None:
        """Delete a record and its uploads (a job that was never dispatched)."""
        self.kv.delete(self.key(record.id), *self._input_keys(record))

    def _input_keys(self, record: JobRecord) -> list[str]:
        return [self.key(record.id, "input", i) for i in range(record.total)]

    def delete_inputs(self, record: JobRecord) -> None:
        self.kv.delete(*self._input_keys(record))

    def _results_item(
        self,
        job_id: str,
        results: Sequence[str],
        images: Sequence[Mapping[ArtefactKind, bytes]],
        extra: Sequence[Mapping[ArtefactKind, bytes]],
    ) -> tuple[dict[str, bytes], int]:
        """Results JSON (one AnalysisResult JSON text per input), the PNGs per input (``mask``,
        and ``overlay`` or the ``display`` it is drawn from) and ``extra`` artefacts per input
        (the DICOM SEG and SR), all with the results' TTL."""
        items = {self.key(job_id, "results"): ("[" + ",".join(results) + "]").encode()}
        for per_input in (images, extra):
            for i, artefacts in enumerate(per_input):
                items |= {self.key(job_id, kind, i): data for kind, data in artefacts.items()}
        return items, self.ttls.result

    def put_artefact(self, job_id: str, kind: ArtefactKind, index: int, data: bytes) -> None:
        """One more artefact of a succeeded job (an overlay drawn on request), with the TTL
        its results have left."""
        left = self.kv.ttl(self.key(job_id, "results"))
        if left:
            self.kv.write([({self.key(job_id, kind, index): data}, left)])

    def results(self, job_id: str) -> list[dict[str, Any]] | None:
        data = self.kv.get(self.key(job_id, "results"))
        if data is None:
            return None
        parsed: list[dict[str, Any]] = json.loads(data)
        return parsed

    def artefact(self, job_id: str, kind: ArtefactKind, index: int) -> bytes | None:
        return self.kv.get(self.key(job_id, kind, index))

    def claim_idempotency(self, scope: str, key_hash: str, value: str) -> str | None:
        """Claim ``key_hash`` for ``value``; returns the value of an earlier claim instead."""
        name = f"{self.namespace}:idem:{scope}:{key_hash}"
        if self.kv.set_nx(name, value.encode(), self.ttls.failure):
            return None
        existing = self.kv.get(name)
        return existing.decode() if existing is not None else None

    def idempotent_job(self, scope: str, key_hash: str) -> str | None:
        """The value an earlier claim of ``key_hash`` stored, if any."""
        existing = self.kv.get(f"{self.namespace}:idem:{scope}:{key_hash}")
        return None if existing is None else existing.decode()

    def release_idempotency(self, scope: str, key_hash: str) -> None:
        self.kv.delete(f"{self.namespace}:idem:{scope}:{key_hash}")

    def renew_lease(self, job_id: str, holder: str) -> None:
        self.kv.write([({self.key(job_id, "lease"): holder.encode()}, self.ttls.lease)])

    def lease_holder(self, job_id: str) -> str | None:
        data = self.kv.get(self.key(job_id, "lease"))
        return None if data is None else data.decode()

    def drop_lease(self, job_id: str) -> None:
        self.kv.delete(self.key(job_id, "lease"))
