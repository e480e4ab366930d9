"""Fixtures shared by the service tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.service import jobs_support as js


@pytest.fixture
def db() -> Iterator[redis.Redis]:
    """The test Redis database (``jobs_support.TEST_REDIS_URL``), empty before and after."""
    client = js.redis_or_skip()
    client.flushdb()
    yield client
    client.flushdb()
