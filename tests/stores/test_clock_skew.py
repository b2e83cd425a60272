"""Workers deciding on their own clocks (a store given ``clock=``) still share a limit.

By default a store decides on its own clock (`test_store_clock.py`); these tests cover stores
given callers' clocks, as every test with a `FakeClock` does. Two app instances (two
`RateLimitMiddleware` stacks over two store objects on the same backend) have clocks 1 s or
0.25 s apart that straddle a window boundary, the case where a lagging worker used to take the
leader's newer window for an empty bucket and start its own over it, so the two reset each
other's counts and admitted every request. Requests alternate between the instances. A shared
`MemoryStore` has one clock, so for memory the two clocks meet in the algorithm directly."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bastion import RateLimitMiddleware, RateLimitSettings, Tier
from bastion._core.algorithms import MAX_CLOCK_LEAD_MS, State, decide
from bastion.stores import RateLimitHit
from tests.conftest import service_url
from tests.ratelimit.conftest import client, echo_app
from tests.stores.redis_support import delete_prefix, unique_prefix

pytestmark = pytest.mark.anyio

Clock = Callable[[], float]
PairFactory = Callable[[Clock, Clock], AbstractAsyncContextManager[tuple[Any, Any]]]

BOUNDARY = 1_800_000_000.0
"""A multiple of every window below: the clocks straddle it."""
LIMIT = 5
WINDOW = 10
REQUESTS = 6 * LIMIT


@asynccontextmanager
async def fakeredis_pair(one: Clock, two: Clock) -> AsyncIterator[tuple[Any, Any]]:
    import fakeredis

    from bastion.stores import RedisStore

    server = fakeredis.FakeServer()
    clients = [fakeredis.FakeAsyncRedis(server=server) for _ in range(2)]
    try:
        yield RedisStore(clients[0], clock=one), RedisStore(clients[1], clock=two)
    finally:
        for each in clients:
            await each.aclose()


@asynccontextmanager
async def redis_pair(one: Clock, two: Clock) -> AsyncIterator[tuple[Any, Any]]:
    from bastion.stores import RedisStore

    url, prefix = service_url("BASTION_TEST_REDIS_URL"), unique_prefix()
    stores = [RedisStore.from_url(url, prefix=prefix, clock=clock) for clock in (one, two)]
    try:
        yield stores[0], stores[1]
    finally:
        for store in stores:
            await store.aclose()
        await delete_prefix(url, prefix)


@asynccontextmanager
async def sql_pair(url: str, one: Clock, two: Clock) -> AsyncIterator[tuple[Any, Any]]:
    from bastion.stores.sql import SQLStore

    prefix = f"t{uuid.uuid4().hex[:12]}_"
    stores = [SQLStore(url=url, table_prefix=prefix, clock=clock) for clock in (one, two)]
    try:
        await stores[0].create_tables()
        yield stores[0], stores[1]
    finally:
        async with stores[0].engine.begin() as conn:
            await conn.run_sync(stores[0].metadata.drop_all)
        for store in stores:
            await store.aclose()


@asynccontextmanager
async def sqlite_pair(one: Clock, two: Clock) -> AsyncIterator[tuple[Any, Any]]:
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite+aiosqlite:///{Path(directory) / 'skew.db'}"
        async with sql_pair(url, one, two) as pair:
            yield pair


@asynccontextmanager
async def postgres_pair(one: Clock, two: Clock) -> AsyncIterator[tuple[Any, Any]]:
    async with sql_pair(service_url("BASTION_TEST_POSTGRES_URL"), one, two) as pair:
        yield pair


@asynccontextmanager
async def mysql_pair(one: Clock, two: Clock) -> AsyncIterator[tuple[Any, Any]]:
    async with sql_pair(service_url("BASTION_TEST_MYSQL_URL"), one, two) as pair:
        yield pair


PAIRS = [
    pytest.param(fakeredis_pair, id="fakeredis"),
    pytest.param(redis_pair, marks=pytest.mark.redis, id="redis"),
    pytest.param(sqlite_pair, id="sqlite"),
    pytest.param(postgres_pair, marks=pytest.mark.postgres, id="postgres"),
    pytest.param(mysql_pair, marks=pytest.mark.mysql, id="mysql"),
]
ALGORITHMS = ["fixed_window", "sliding_window", "gcra"]
# instance one's clock minus instance two's, in seconds: ahead or behind by 1 s or 0.25 s
SKEWS = [1.0, -1.0, 0.25, -0.25]


def expected(algorithm: str, skew: float) -> int:
    """Exactly the limit; except that a fixed window lets the lagging instance, when it
    speaks first, spend one request in the window its own clock is still in (the leader has
    not opened the next): per window, still exactly the limit."""
    laggard_first = skew < 0
    return LIMIT + 1 if algorithm == "fixed_window" and laggard_first else LIMIT


def clocks(skew: float) -> tuple[Clock, Clock]:
    """Instance one's and two's clocks, frozen on either side of ``BOUNDARY``."""
    one = BOUNDARY + skew / 2
    return (lambda: one), (lambda: one - skew)


@pytest.mark.parametrize("skew", SKEWS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("factory", PAIRS)
async def test_two_instances_with_skewed_clocks_admit_the_limit(
    factory: PairFactory, algorithm: str, skew: float
) -> None:
    """Two instances whose clocks straddle a window boundary admit exactly the limit."""
    tier = Tier(name="skew", limit=LIMIT, window=WINDOW, algorithm=algorithm)  # type: ignore[arg-type]
    settings = RateLimitSettings(tiers=(tier,))
    async with factory(*clocks(skew)) as stores:
        apps = [RateLimitMiddleware(echo_app, store=s, settings=settings) for s in stores]
        clients = [client(app) for app in apps]
        statuses = [(await clients[i % 2].get("/")).status_code for i in range(REQUESTS)]
        for each in clients:
            await each.aclose()
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) == expected(algorithm, skew), statuses


def _admitted(hit: RateLimitHit, times: list[int]) -> int:
    state: State | None = None
    admitted = 0
    for now in times:
        decision, new = decide(hit, state, now)
        if decision.allowed:
            state, admitted = new, admitted + 1
    return admitted


@pytest.mark.parametrize("skew", SKEWS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_algorithms_decide_two_clocks_exactly(algorithm: str, skew: float) -> None:
    """One bucket decided at two alternating clocks admits exactly the limit (the memory
    store's case: its one clock meets another worker's only through the algorithm)."""
    hit = RateLimitHit("k", algorithm, LIMIT, WINDOW * 1000)  # type: ignore[arg-type]
    one, two = (round(c() * 1000) for c in clocks(skew))
    assert _admitted(hit, [one, two] * (REQUESTS // 2)) == expected(algorithm, skew)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_lagging_caller_decides_as_of_the_bucket(algorithm: str) -> None:
    """A caller behind the bucket's time (its window's start; GCRA: its last decision) gets
    the answer given at that time."""
    hit = RateLimitHit("k", algorithm, LIMIT, WINDOW * 1000)  # type: ignore[arg-type]
    now = round(BOUNDARY * 1000) + 300
    _, state = decide(hit, None, now)
    bucket_time = state[2] if algorithm == "gcra" else state[0]
    assert decide(hit, state, now - 900) == decide(hit, state, bucket_time)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_bucket_from_a_clock_far_ahead_does_not_hold_it(algorithm: str) -> None:
    """A bucket written by a clock more than a minute ahead is ignored, not obeyed until
    that time comes: a broken clock cannot lock a bucket for hours."""
    hit = RateLimitHit("k", algorithm, 1, WINDOW * 1000)  # type: ignore[arg-type]
    now = round(BOUNDARY * 1000)
    _, state = decide(hit, None, now + MAX_CLOCK_LEAD_MS + 3_600_000)
    assert decide(hit, state, now)[0].allowed
    assert not decide(hit, state, now + 3_600_000)[0].allowed
