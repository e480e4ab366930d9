"""Per-key rate limits: a fixed window counter in the job store's key-value space.

``rate_limit_requests`` requests per ``rate_limit_window_s`` for each API key (anonymous callers
share one bucket per client address). The counter is ``<namespace>:rl:<bucket>:<window>``,
incremented atomically and expiring with its window, in Redis (shared by every API process)
or in process memory. Past the limit: 429 ``rate_limited`` with ``Retry-After`` = the seconds
until the window ends.
"""

from __future__ import annotations

import math
import time

from service.errors import RateLimitedError
from service.jobs.store import KeyValue


class RateLimiter:
    """At most ``limit`` hits per bucket and fixed window of ``window_s`` seconds."""

    def __init__(self, kv: KeyValue, namespace: str, limit: int, window_s: int) -> None:
        self.kv, self.namespace, self.limit, self.window_s = kv, namespace, limit, window_s

    def hit(self, bucket: str, now: float | None = None) -> int:
        """Count one request; returns the requests left in the window, or raises."""
        if self.limit <= 0:
            return -1
        now = time.time() if now is None else now
        window = int(now // self.window_s)
        count = self.kv.incr(f"{self.namespace}:rl:{bucket}:{window}", self.window_s + 1)
        if count > self.limit:
            retry_after = max(1, math.ceil((window + 1) * self.window_s - now))
            raise RateLimitedError(
                f"more than {self.limit} requests in {self.window_s} s for this key; "
                f"retry in {retry_after} s",
                retry_after=retry_after,
            )
        return self.limit - count
