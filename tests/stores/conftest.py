"""The one table of store backends that the conformance suite runs against.

Each entry is an async context manager factory taking the fake clock: every store takes its
"now" from an injectable clock, so expiry is tested without sleeping on every backend. Each
factory yields a fresh, empty store (a unique key prefix, a flushed database or truncated
tables). Add a backend here and every conformance test runs on it.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bastion.stores import MemoryStore
from tests.conftest import FakeClock, service_url
from tests.stores.redis_support import fakeredis_store, redis_store

StoreFactory = Callable[[FakeClock], AbstractAsyncContextManager[Any]]


SMALL_MEMORY = 32
"""Records and buckets the small memory store holds: fewer than a conformance flood writes."""


@asynccontextmanager
async def memory_store(clock: FakeClock) -> AsyncIterator[MemoryStore]:
    yield MemoryStore(clock=clock)


@asynccontextmanager
async def small_memory_store(clock: FakeClock) -> AsyncIterator[MemoryStore]:
    """A memory store that the conformance floods fill, so they test what it evicts."""
    yield MemoryStore(clock=clock, max_records=SMALL_MEMORY, max_buckets=SMALL_MEMORY)


@asynccontextmanager
async def fresh_sql_store(url: str, clock: FakeClock) -> AsyncIterator[Any]:
    """A SQLStore on its own uniquely prefixed tables, dropped afterwards: other tests and
    other engineers share the database servers."""
    from bastion.stores.sql import SQLStore

    store = SQLStore(url=url, table_prefix=f"t{uuid.uuid4().hex[:12]}_", clock=clock)
    try:
        await store.create_tables()
        yield store
    finally:
        async with store.engine.begin() as conn:
            await conn.run_sync(store.metadata.drop_all)
        await store.aclose()


@asynccontextmanager
async def sqlite_store(clock: FakeClock) -> AsyncIterator[Any]:
    # a file, not :memory:, so the pool holds several connections and concurrency is real
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite+aiosqlite:///{Path(directory) / 'bastion.db'}"
        async with fresh_sql_store(url, clock) as store:
            yield store


@asynccontextmanager
async def postgres_store(clock: FakeClock) -> AsyncIterator[Any]:
    async with fresh_sql_store(service_url("BASTION_TEST_POSTGRES_URL"), clock) as store:
        yield store


@asynccontextmanager
async def mysql_store(clock: FakeClock) -> AsyncIterator[Any]:
    async with fresh_sql_store(service_url("BASTION_TEST_MYSQL_URL"), clock) as store:
        yield store


STORES: list[Any] = [
    pytest.param(memory_store, id="memory"),
    pytest.param(small_memory_store, id="memory-small"),
    pytest.param(fakeredis_store, id="fakeredis"),
    pytest.param(redis_store, marks=pytest.mark.redis, id="redis"),
    pytest.param(sqlite_store, id="sqlite"),
    pytest.param(postgres_store, marks=pytest.mark.postgres, id="postgres"),
    pytest.param(mysql_store, marks=pytest.mark.mysql, id="mysql"),
]
"""Every backend; real-service entries carry their marker (redis, postgres, mysql)."""

REDIS_STORES = [p for p in STORES if p.id in {"fakeredis", "redis"}]
"""The Redis rows of the table, for the Redis-specific tests."""

SQL_STORES = [p for p in STORES if p.id in {"sqlite", "postgres", "mysql"}]
"""The SQL store on each dialect, for SQL-specific tests."""


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Any]:
    """Each backend in turn, fresh and empty for every test."""
    async with request.param(clock) as store:
        yield store


@pytest.fixture(params=SQL_STORES)
async def sql_store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Any]:
    """The SQL store on each dialect in turn, on fresh tables of its own."""
    async with request.param(clock) as store:
        yield store
