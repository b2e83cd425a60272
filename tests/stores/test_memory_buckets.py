"""MemoryStore's rate-limit buckets stay bounded: expired ones are freed as new ones arrive."""

from __future__ import annotations

import pytest

from bastion.stores import MemoryStore, RateLimitHit
from tests.conftest import FakeClock

pytestmark = pytest.mark.anyio


async def test_expired_buckets_are_freed_as_time_passes(clock: FakeClock) -> None:
    """With a steady stream of new keys, only the buckets still in their window are kept."""
    store = MemoryStore(clock=clock)
    for i in range(1_000):
        await store.hit([RateLimitHit(f"k{i}", "fixed_window", 5, 1_000)])
        clock.advance(0.1)
    assert len(store._buckets) <= 15


async def test_bucket_count_never_exceeds_the_bound(clock: FakeClock) -> None:
    """However many live keys arrive at once, at most max_buckets are held."""
    store = MemoryStore(clock=clock, max_buckets=50)
    for i in range(500):
        await store.hit([RateLimitHit(f"k{i}", "gcra", 5, 60_000)])
    assert len(store._buckets) == 50
    assert (await store.hit([RateLimitHit("k499", "gcra", 5, 60_000)]))[0].remaining == 3
