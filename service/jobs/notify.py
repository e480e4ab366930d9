"""Wake the requests that wait on a job (``Prefer: wait``) the moment it ends.

``JobStore.save`` announces the id of every job that reaches a final state on the channel
``<ns>:job-final``: through Redis pub/sub in queued mode (a worker publishes; each API process
listens on one connection, in one thread, :class:`RedisListener`), through process memory in
process. :class:`Waiters` holds the asyncio events of the waiting requests and sets them from
whichever thread hears the id.

A waiter registers before it reads the record and re-reads it at least every
``FALLBACK_POLL_S``, so an announcement that is lost (Redis restarting, the listener
reconnecting) costs latency, never a wrong or missing answer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis

logger = logging.getLogger(__name__)

FALLBACK_POLL_S = 1.0


def final_channel(namespace: str) -> str:
    return f"{namespace}:job-final"


class Waiters:
    """asyncio events of waiting requests, by job id; :meth:`wake` is safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    @contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set when ``job_id`` is announced final (call from a running event loop)."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._events.setdefault(job_id, []).append(entry)
        try:
            yield entry[1]
        finally:
            with self._lock:
                entries = self._events.get(job_id, [])
                if entry in entries:
                    entries.remove(entry)
                if not entries:
                    self._events.pop(job_id, None)

    def wake(self, job_id: str) -> None:
        with self._lock:
            entries = list(self._events.get(job_id, ()))
        for loop, event in entries:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that request's loop has closed
                continue

    def __len__(self) -> int:
        with self._lock:
            return sum(len(entries) for entries in self._events.values())


class RedisListener:
    """One daemon thread: SUBSCRIBE to the final channel, wake the waiters of each id heard.

    Reconnects with a growing pause (up to 5 s) when Redis goes away; :meth:`start` returns once
    the subscription holds (or after ``ready_timeout_s``, the waiters' polling covers the gap).
    """

    def __init__(self, client: redis.Redis, channel: str, wake: Callable[[str], None]) -> None:
        self.client = client
        self.channel = channel
        self.wake = wake
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._lock = threading.Lock()

    def start(self, ready_timeout_s: float = 1.0) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="breastdx-job-final", daemon=True
                )
                self._thread.start()
        self._subscribed.wait(ready_timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=3)

    def _run(self) -> None:
        pause = 0.1
        while not self._stop.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                self._subscribed.set()
                pause = 0.1
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        self.wake(data.decode() if isinstance(data, bytes) else str(data))
            except (redis.RedisError, OSError, ValueError) as exc:
                self._subscribed.clear()
                logger.warning(
                    "job-final listener lost Redis (%s); reconnecting", type(exc).__name__
                )
                self._stop.wait(pause)
                pause = min(pause * 2, 5.0)
            finally:
                pubsub.close()
