"""The SQL store decides rate limits exactly as the Python algorithms do, on every dialect.

PostgreSQL decides in its PL/pgSQL port and MySQL/MariaDB in its stored procedure (both in
`stores/sql/_functions.py`, the procedure run in autocommit on the engine the store builds and
inside the store's transaction on an engine you pass); SQLite locks the rows and decides in
Python. Random schedules (mixed algorithms, several tiers per request,
irregular steps, clocks that lag or lead by up to 1.5 s) must give the reference model's
decisions field by field. Large tiers check that no bigint arithmetic overflows or rounds.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.stores import RateLimitHit
from tests.conftest import service_url
from tests.stores.conftest import SQL_STORES, mysql_store
from tests.stores.rate_model import ALGORITHMS, SKEWED_STEPS, SMALL_TIERS, Model, MutableClock

pytestmark = pytest.mark.anyio

LARGE_TIERS = st.tuples(
    ALGORITHMS, st.integers(1, 10**7), st.integers(1, 10**10), st.integers(0, 3)
)
TIERS = st.lists(st.one_of(SMALL_TIERS, SMALL_TIERS, LARGE_TIERS), min_size=1, max_size=4)


@asynccontextmanager
async def mysql_on_your_engine(clock: MutableClock) -> AsyncIterator[Any]:
    """MariaDB through an engine the application built (not in autocommit mode)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from bastion.stores.sql import SQLStore

    async with mysql_store(clock) as owned:
        engine = create_async_engine(service_url("BASTION_TEST_MYSQL_URL"))
        prefix = owned.tables.buckets.name.removesuffix("buckets")
        try:
            yield SQLStore(engine, table_prefix=prefix, clock=clock)
        finally:
            await engine.dispose()


DIALECTS = [
    *SQL_STORES,
    pytest.param(mysql_on_your_engine, marks=pytest.mark.mysql, id="mysql-your-engine"),
]


def _hits(tiers: list[tuple[str, int, int, int]]) -> list[RateLimitHit]:
    return [
        RateLimitHit(key=f"t{i}", algorithm=a, limit=limit, window_ms=w, cost=cost)  # type: ignore[arg-type]
        for i, (a, limit, w, cost) in enumerate(tiers)
    ]


@pytest.mark.parametrize("factory", DIALECTS)
async def test_small_tiers_agree_at_every_millisecond(factory: Any) -> None:
    """Every small tier, hit in bursts of 0 to 3 at each millisecond of three windows, agrees."""
    clock = MutableClock(1_800_000_000_000)
    model = Model()
    async with factory(clock) as store:
        for n, (algorithm, limit, cost) in enumerate(
            itertools.product(["fixed_window", "sliding_window", "gcra"], [1, 3], [0, 1, 4])
        ):
            hit = RateLimitHit(f"b{n}", algorithm, limit, 10, cost)  # type: ignore[arg-type]
            for ms in range(30):
                clock.ms += 1
                for _ in range((ms * 7) % 4):
                    assert await store.hit([hit]) == model.hit([hit], clock.ms), (hit, ms)


@pytest.mark.parametrize("factory", DIALECTS)
@settings(max_examples=40)
@given(tiers=TIERS, steps=SKEWED_STEPS)
async def test_sql_decisions_equal_the_model(
    factory: Any,
    tiers: list[tuple[str, int, int, int]],
    steps: list[tuple[int, int, list[int]]],
) -> None:
    """Every decision of the SQL store equals the Python model's, clock skew included."""
    hits = _hits(tiers)
    true_ms = 1_800_000_000_123
    clock = MutableClock(true_ms)
    model = Model()
    async with factory(clock) as store:
        for advance, error, chosen in steps:
            true_ms += advance
            clock.ms = true_ms + error
            request = list({hits[i % len(hits)].key: hits[i % len(hits)] for i in chosen}.values())
            assert await store.hit(request) == model.hit(request, clock.ms)
