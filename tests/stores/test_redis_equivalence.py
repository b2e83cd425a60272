"""The Lua port of the rate-limit algorithms gives exactly the answers of the Python ones.

Random schedules of requests (mixed algorithms, limits, windows, costs, several tiers per
request, irregular time steps) go to a `MemoryStore` and a `RedisStore` on one fake clock; every
decision must match to the millisecond. Large tiers near `MAX_TIER_SPAN` exercise the exactness
of Lua's double arithmetic.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.stores import MemoryStore, RateLimitHit
from bastion.stores._redis import MAX_TIER_SPAN
from tests.conftest import FakeClock
from tests.stores.conftest import REDIS_STORES
from tests.stores.rate_model import SKEWED_STEPS, Model, MutableClock

pytestmark = pytest.mark.anyio

ALGORITHMS = st.sampled_from(["fixed_window", "sliding_window", "gcra"])
SMALL_TIERS = st.tuples(
    ALGORITHMS,
    st.integers(1, 12),
    st.sampled_from([1, 3, 10, 1_000, 7_919, 60_000]),
    st.integers(0, 4),
)
LARGE_TIERS = st.tuples(
    ALGORITHMS,
    st.integers(1, 2**25),
    st.integers(1, 2**40),
    st.integers(0, 3),
).filter(lambda t: (t[1] + t[3]) * t[2] <= MAX_TIER_SPAN)
TIERS = st.lists(st.one_of(SMALL_TIERS, SMALL_TIERS, LARGE_TIERS), min_size=1, max_size=4)
# time steps: none (bursts), a few ms, or a fraction of one tier's window (k/8 of it)
ADVANCES = st.one_of(
    st.just(0),
    st.just(0),
    st.integers(0, 50),
    st.tuples(st.integers(0, 3), st.integers(0, 24)),
)
STEPS = st.lists(
    st.tuples(ADVANCES, st.lists(st.integers(0, 3), min_size=1, max_size=3, unique=True)),
    min_size=20,
    max_size=80,
)


@pytest.mark.parametrize("factory", REDIS_STORES)
async def test_small_tiers_agree_at_every_millisecond(factory: Any) -> None:
    """Every small tier, hit in bursts of 0 to 3 at each millisecond of three windows, agrees."""
    clock = FakeClock(1_800_000_000.0)
    memory = MemoryStore(clock=clock)
    async with factory(clock, expiry_slack_ms=3_600_000) as redis_store:
        for n, (algorithm, limit, cost) in enumerate(
            itertools.product(["fixed_window", "sliding_window", "gcra"], [1, 2, 3], [0, 1, 2, 4])
        ):
            hit = RateLimitHit(f"b{n}", algorithm, limit, 10, cost)  # type: ignore[arg-type]
            for ms in range(30):
                clock.advance(0.001)
                for _ in range((ms * 7) % 4):
                    assert await redis_store.hit([hit]) == await memory.hit([hit]), (hit, ms)


@pytest.mark.parametrize("factory", REDIS_STORES)
@given(tiers=TIERS, steps=STEPS)
async def test_redis_decisions_equal_memory_decisions(
    factory: Any,
    tiers: list[tuple[str, int, int, int]],
    steps: list[tuple[int | tuple[int, int], list[int]]],
) -> None:
    """Every decision of the Lua scripts equals the Python reference's, field by field."""
    hits = [
        RateLimitHit(key=f"t{i}", algorithm=a, limit=limit, window_ms=w, cost=cost)  # type: ignore[arg-type]
        for i, (a, limit, w, cost) in enumerate(tiers)
    ]
    clock = FakeClock(1_800_000_000.123)
    memory = MemoryStore(clock=clock)
    # the Redis TTL outlives the fake clock's steps, so only the clock decides expiry here
    async with factory(clock, expiry_slack_ms=3_600_000) as redis_store:
        for advance, chosen in steps:
            if isinstance(advance, tuple):
                advance = hits[advance[0] % len(hits)].window_ms * advance[1] // 8
            clock.advance(advance / 1000)
            request = [hits[i % len(hits)] for i in chosen]
            request = list({h.key: h for h in request}.values())
            assert await redis_store.hit(request) == await memory.hit(request)


@pytest.mark.parametrize("factory", REDIS_STORES)
@given(tiers=st.lists(SMALL_TIERS, min_size=1, max_size=4), steps=SKEWED_STEPS)
async def test_redis_decisions_equal_the_model_under_clock_skew(
    factory: Any,
    tiers: list[tuple[str, int, int, int]],
    steps: list[tuple[int, int, list[int]]],
) -> None:
    """Requests from workers whose clocks lag or lead get the Python model's decisions."""
    hits = [
        RateLimitHit(key=f"t{i}", algorithm=a, limit=limit, window_ms=w, cost=cost)  # type: ignore[arg-type]
        for i, (a, limit, w, cost) in enumerate(tiers)
    ]
    true_ms = 1_800_000_000_123
    clock = MutableClock(true_ms)
    model = Model()
    async with factory(clock, expiry_slack_ms=3_600_000) as redis_store:
        for advance, error, chosen in steps:
            true_ms += advance
            clock.ms = true_ms + error
            request = list({hits[i % len(hits)].key: hits[i % len(hits)] for i in chosen}.values())
            assert await redis_store.hit(request) == model.hit(request, clock.ms)
