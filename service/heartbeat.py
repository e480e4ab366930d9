"""Worker liveness for ``/readyz``: a short-lived key per worker, renewed by a thread.

RQ's own registry keeps a worker's key for ``worker_ttl + 60`` s and its entry in the queue's
worker set until a registry clean-up, so a worker killed with SIGKILL was counted for minutes,
and a Redis that came back empty forgot the live workers for good. Here each worker writes
``<namespace>:alive:<worker name>`` (its stage names) with a TTL of ``worker_heartbeat_ttl_s``
and renews it every third of that: a dead worker leaves readiness within one TTL, and after a
Redis restart the next beat writes the key again (and registers the worker with RQ again).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Sequence

import redis

from models_registry.card import Stage
from service.config import Settings

logger = logging.getLogger(__name__)


def heartbeat_key(namespace: str, worker_name: str) -> str:
    return f"{namespace}:alive:{worker_name}"


def live_heartbeats(settings: Settings, client: redis.Redis) -> dict[Stage, int]:
    """Workers with a live heartbeat key, per stage they serve."""
    counts = dict.fromkeys(Stage, 0)
    for key in client.scan_iter(match=heartbeat_key(settings.namespace, "*"), count=1000):
        value = client.get(key)
        try:
            stages = json.loads(value) if value is not None else []
        except ValueError:
            continue
        for name in stages if isinstance(stages, list) else []:
            if name in {s.value for s in Stage}:
                counts[Stage(name)] += 1
    return counts


class Heartbeat(threading.Thread):
    """Renews the worker's key every ``ttl / 3`` s; ``on_lost`` runs when the key was gone
    (Redis restarted empty or flushed) so that the caller can register again."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        worker_name: str,
        stages: Sequence[Stage],
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(name="breastdx-heartbeat", daemon=True)
        self.client, self.ttl_s = client, settings.worker_heartbeat_ttl_s
        self.key = heartbeat_key(settings.namespace, worker_name)
        self.value = json.dumps([stage.value for stage in stages])
        self.on_lost = on_lost
        self.stopped = threading.Event()

    def beat(self, *, first: bool = False) -> None:
        """Write the key (SET ... GET: one round trip tells whether it had vanished)."""
        previous = self.client.set(self.key, self.value, ex=self.ttl_s, get=True)
        if previous is None and not first and self.on_lost is not None:
            logger.warning("Redis had forgotten this worker; registering again")
            self.on_lost()

    def run(self) -> None:
        first = True
        while True:
            try:
                self.beat(first=first)
                first = False
            except redis.RedisError as exc:
                logger.warning("worker heartbeat not written: %s", type(exc).__name__)
            if self.stopped.wait(self.ttl_s / 3):
                return

    def stop(self) -> None:
        """Stop beating and remove the key: a clean stop leaves readiness at once."""
        self.stopped.set()
        with contextlib.suppress(redis.RedisError):
            self.client.delete(self.key)
