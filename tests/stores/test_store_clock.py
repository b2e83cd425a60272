"""Two app instances on hosts whose clocks are 1 s ahead and 1 s behind share a limit exactly.

Each instance is its own process (`skewed_instance`) whose ``time.time`` is shifted before
bastion is imported, so whatever reads the host's clock reads a skewed one. The instances take
turns, the one behind first, against one bucket of a 2-second window: their clocks are exactly
one window apart, so a store deciding on the callers' clocks puts them in neighbouring windows
and a fixed window admits its limit plus one (the control case below shows the harness sees
it). A store deciding on its own clock (Redis ``TIME``, the database's clock) admits exactly
the limit.

Leases likewise: the instance ahead must find a lease the one behind just took still live. On
the callers' clocks it sees the lease as two seconds older than it is and takes it over.

A run is judged only when it fits inside one window of the clock deciding it (read before and
after); one that straddles a boundary is repeated on a fresh bucket, at most `ATTEMPTS` times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import service_url
from tests.stores.redis_support import delete_prefix, unique_prefix

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 5
WINDOW_S = 2
"""Twice the skew: the instances' clocks always fall in neighbouring windows."""
SKEWS = (-1.0, 1.0)
"""The instances' clock offsets, in the order they take turns: the one behind speaks first."""
REQUESTS = 4 * LIMIT
ATTEMPTS = 8
"""Runs allowed to straddle a window boundary before the test gives up (each straddles with
the chance run time / 2 s)."""
ALGORITHMS = ["fixed_window", "sliding_window", "gcra"]
LEASE_MS = 1500
"""Shorter than the instances' 2 s apart, longer than a run (a slower run is repeated)."""
GCRA_WINDOW_S = 600
"""GCRA refills a token every window / limit: long enough that no run sees one come back."""

Clock = Callable[[], Awaitable[int]]
"""The deciding clock, in ms."""


class Instance:
    """One skewed app instance process, driven a request at a time over its stdin."""

    def __init__(self, skew: float) -> None:
        env = {**os.environ, "BASTION_TEST_SKEW": str(skew)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.stores.skewed_instance"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def request(self, spec: dict[str, Any]) -> int:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps(spec) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"the instance exited with {self.process.wait()}"
        return int(line)

    def close(self) -> None:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.process.stdout.close()


@pytest.fixture(scope="module")
def instances() -> Iterator[list[Instance]]:
    started = [Instance(skew) for skew in SKEWS]
    try:
        yield started
    finally:
        for each in started:
            each.close()


def _host_ms() -> int:
    return int(time.time() * 1000)


async def _instances_clock() -> int:
    """Where the instances' windows turn: both change window when the real clock, a second
    ahead, crosses a multiple of the window."""
    return _host_ms() + 1000


@asynccontextmanager
async def redis_backend() -> AsyncIterator[tuple[dict[str, Any], Clock]]:
    from redis.asyncio import Redis

    url, prefix = service_url("BASTION_TEST_REDIS_URL"), unique_prefix()
    client = Redis.from_url(url)

    async def server_clock() -> int:
        seconds, micros = await client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    try:
        yield {"backend": "redis", "url": url, "prefix": prefix}, server_clock
    finally:
        await client.aclose()
        await delete_prefix(url, prefix)


@asynccontextmanager
async def sql_backend(url: str, now_sql: str | None) -> AsyncIterator[tuple[dict[str, Any], Clock]]:
    from sqlalchemy import text

    from bastion.stores.sql import SQLStore

    prefix = f"t{uuid.uuid4().hex[:12]}_"
    store = SQLStore(url=url, table_prefix=prefix)
    await store.create_tables()

    async def database_clock() -> int:
        if now_sql is None:  # SQLite: the host's clock, which is the database's
            return _host_ms()
        async with store.engine.connect() as conn:
            return int((await conn.execute(text(now_sql))).scalar_one())

    try:
        yield {"backend": "sql", "url": url, "prefix": prefix}, database_clock
    finally:
        async with store.engine.begin() as conn:
            await conn.run_sync(store.metadata.drop_all)
        await store.aclose()


@asynccontextmanager
async def postgres_backend() -> AsyncIterator[tuple[dict[str, Any], Clock]]:
    now = "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
    async with sql_backend(service_url("BASTION_TEST_POSTGRES_URL"), now) as backend:
        yield backend


@asynccontextmanager
async def mysql_backend() -> AsyncIterator[tuple[dict[str, Any], Clock]]:
    now = "SELECT TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6)) DIV 1000"
    async with sql_backend(service_url("BASTION_TEST_MYSQL_URL"), now) as backend:
        yield backend


@asynccontextmanager
async def sqlite_backend() -> AsyncIterator[tuple[dict[str, Any], Clock]]:
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite+aiosqlite:///{Path(directory) / 'clock.db'}"
        async with sql_backend(url, None) as backend:
            yield backend


BACKENDS = [
    pytest.param(redis_backend, marks=pytest.mark.redis, id="redis"),
    pytest.param(postgres_backend, marks=pytest.mark.postgres, id="postgres"),
    pytest.param(mysql_backend, marks=pytest.mark.mysql, id="mysql"),
    pytest.param(sqlite_backend, id="sqlite"),
]


async def admitted(
    instances: list[Instance], backend: dict[str, Any], clock: Clock, spec: dict[str, Any]
) -> int:
    """Requests admitted by one run that fitted inside one window of ``clock``."""
    window_ms = spec["window"] * 1000
    for _ in range(ATTEMPTS):
        tier = f"clock-{uuid.uuid4().hex[:8]}"
        before = await clock()
        statuses = [
            instances[i % 2].request({**backend, **spec, "tier": tier}) for i in range(REQUESTS)
        ]
        after = await clock()
        assert set(statuses) <= {200, 429}, statuses
        if before // window_ms == after // window_ms:
            return statuses.count(200)
    pytest.fail(f"{ATTEMPTS} runs in a row straddled a window boundary of {spec['window']} s")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("factory", BACKENDS)
async def test_instances_a_second_off_either_way_admit_exactly_the_limit(
    instances: list[Instance], factory: Any, algorithm: str
) -> None:
    """The store's own clock decides: exactly the limit, whatever the hosts' clocks say."""
    window = GCRA_WINDOW_S if algorithm == "gcra" else WINDOW_S
    spec = {"algorithm": algorithm, "limit": LIMIT, "window": window, "clock": "store"}
    async with factory() as (backend, clock):
        assert await admitted(instances, backend, clock, spec) == LIMIT


@pytest.mark.redis
async def test_on_the_callers_clocks_the_harness_sees_the_skew(instances: list[Instance]) -> None:
    """The control: given the hosts' clocks, a fixed window admits one more than its limit
    (the instance behind opens the window its clock is still in), so a store that read the
    hosts' clocks fails the test above."""
    spec = {"algorithm": "fixed_window", "limit": LIMIT, "window": WINDOW_S, "clock": "host"}
    async with redis_backend() as (backend, _):
        assert await admitted(instances, backend, _instances_clock, spec) == LIMIT + 1


async def taken_over(
    instances: list[Instance], backend: dict[str, Any], clock: Clock, mode: str
) -> bool:
    """Whether the instance ahead took over the lease the one behind had just taken, in a
    run that took less than the lease by ``clock``."""
    for _ in range(ATTEMPTS):
        spec = {**backend, "op": "claim", "clock": mode, "key": uuid.uuid4().hex}
        spec["lease_ms"] = LEASE_MS
        before = await clock()
        assert instances[0].request(spec) == 1
        second = instances[1].request(spec)
        if await clock() - before < LEASE_MS:
            return second == 1
    pytest.fail(f"{ATTEMPTS} runs in a row took longer than a lease of {LEASE_MS} ms")


@pytest.mark.parametrize("factory", BACKENDS)
async def test_an_instance_two_seconds_ahead_finds_a_live_lease_live(
    instances: list[Instance], factory: Any
) -> None:
    """Lease deadlines are on the store's clock too: no takeover of a live lease (on SQL to
    within the round trip that measured the database clock's offset)."""
    async with factory() as (backend, clock):
        assert not await taken_over(instances, backend, clock, "store")


@pytest.mark.postgres
async def test_on_the_callers_clocks_a_live_lease_is_taken_over(
    instances: list[Instance],
) -> None:
    """The control: on the hosts' clocks the instance ahead takes the live lease over (the
    duplicate run the store's clock prevents)."""
    async with postgres_backend() as (backend, clock):
        assert await taken_over(instances, backend, clock, "host")
