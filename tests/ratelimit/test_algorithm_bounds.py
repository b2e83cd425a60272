"""``remaining`` stays within ``[0, limit]`` whatever state a bucket is found in.

A bucket can be read in states no single tier and clock would leave: a tier's window or limit
changed between deployments (the bucket key is the tier's name), or a process whose clock lags
reads a bucket another one wrote. The ``r`` of the RateLimit field is still a count of
requests, never negative.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion._core.algorithms import State, decide
from bastion.stores import RateLimitHit
from tests.conftest import FakeClock
from tests.stores.conftest import STORES

pytestmark = pytest.mark.anyio

START_MS = 1_800_000_000_000
ALGORITHMS = ["fixed_window", "sliding_window", "gcra"]
STEPS = st.lists(
    st.tuples(
        st.integers(1, 20),  # limit
        st.sampled_from([1, 7, 1_000, 60_000, 3_600_000]),  # window ms
        st.integers(0, 3),  # cost
        st.integers(-120_000, 120_000),  # clock step, backwards too
    ),
    min_size=1,
    max_size=40,
)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@given(steps=STEPS)
def test_remaining_is_never_negative_nor_above_the_limit(
    algorithm: Any, steps: list[tuple[int, int, int, int]]
) -> None:
    """Over any schedule of hits on one bucket, with its tier's limit and window changing and
    the clock stepping back and forth, every decision has ``0 <= remaining <= limit``."""
    state: State | None = None
    now = START_MS
    for limit, window, cost, step in steps:
        now += step
        decision, after = decide(RateLimitHit("k", algorithm, limit, window, cost), state, now)
        assert 0 <= decision.remaining <= limit, (decision, state, now)
        if decision.allowed:
            state = after


@pytest.mark.parametrize("factory", STORES)
async def test_a_shortened_gcra_window_reports_nothing_remaining(factory: Any) -> None:
    """Every store, the Redis script included, answers ``remaining=0`` (not a negative count)
    for a token bucket whose window was cut from an hour to a minute after use."""
    clock = FakeClock()
    async with factory(clock) as store:
        hourly = RateLimitHit("bucket", "gcra", 10, 3_600_000)
        for _ in range(5):
            (decision,) = await store.hit([hourly])
            assert decision.allowed
        (decision,) = await store.hit([RateLimitHit("bucket", "gcra", 10, 60_000)])
    assert (decision.allowed, decision.remaining) == (False, 0)
    assert decision.reset_ms > 0
