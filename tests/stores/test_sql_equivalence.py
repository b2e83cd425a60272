"""The SQL store decides rate limits exactly as the Python algorithms do, on every dialect.

PostgreSQL decides in its PL/pgSQL port (`stores/sql/_functions.py`); SQLite and MySQL lock
the rows and decide in Python. Random schedules (mixed algorithms, several tiers per request,
irregular steps, clocks that lag or lead by up to 1.5 s) must give the reference model's
decisions field by field. Large tiers check that no bigint arithmetic overflows or rounds.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.stores import RateLimitHit
from tests.stores.conftest import SQL_STORES
from tests.stores.rate_model import ALGORITHMS, SKEWED_STEPS, SMALL_TIERS, Model, MutableClock

pytestmark = pytest.mark.anyio

LARGE_TIERS = st.tuples(
    ALGORITHMS, st.integers(1, 10**7), st.integers(1, 10**10), st.integers(0, 3)
)
TIERS = st.lists(st.one_of(SMALL_TIERS, SMALL_TIERS, LARGE_TIERS), min_size=1, max_size=4)


def _hits(tiers: list[tuple[str, int, int, int]]) -> list[RateLimitHit]:
    return [
        RateLimitHit(key=f"t{i}", algorithm=a, limit=limit, window_ms=w, cost=cost)  # type: ignore[arg-type]
        for i, (a, limit, w, cost) in enumerate(tiers)
    ]


@pytest.mark.parametrize("factory", SQL_STORES)
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


@pytest.mark.parametrize("factory", SQL_STORES)
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
