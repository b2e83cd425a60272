"""The one table of store backends that the conformance suite runs against.

Each entry is an async context manager factory taking the fake clock: every store takes its
"now" from an injectable clock, so expiry is tested without sleeping on every backend. Each
factory yields a fresh, empty store (a unique key prefix, a flushed database or truncated
tables). Add a backend here and every conformance test runs on it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from bastion.stores import MemoryStore
from tests.conftest import FakeClock
from tests.stores.redis_support import fakeredis_store, redis_store

StoreFactory = Callable[[FakeClock], AbstractAsyncContextManager[Any]]


@asynccontextmanager
async def memory_store(clock: FakeClock) -> AsyncIterator[MemoryStore]:
    yield MemoryStore(clock=clock)


STORES: list[Any] = [
    pytest.param(memory_store, id="memory"),
    pytest.param(fakeredis_store, id="fakeredis"),
    pytest.param(redis_store, marks=pytest.mark.redis, id="redis"),
]
"""Every backend; real-service entries carry their marker (redis, postgres, mysql)."""

REDIS_STORES = [p for p in STORES if p.id in {"fakeredis", "redis"}]
"""The Redis rows of the table, for the Redis-specific tests."""


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Any]:
    """Each backend in turn, fresh and empty for every test."""
    async with request.param(clock) as store:
        yield store
