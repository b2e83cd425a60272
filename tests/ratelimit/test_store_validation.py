"""Tiers a store cannot decide exactly are refused when the middleware is built.

A store offering ``validate_hit`` (`TierValidatingStore`) is asked about every tier once, at
construction; without that, an out-of-range tier on Redis would fail on each request it
matched, quietly answered by the fail-open or fail-closed policy.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from bastion import ConfigurationError, RateLimitMiddleware, RateLimitSettings, Tier
from bastion.stores import MemoryStore, RateLimitDecision, RateLimitHit, TierValidatingStore
from bastion.stores._redis import RedisStore
from tests.ratelimit.conftest import call, echo_app

pytestmark = pytest.mark.anyio

HUGE = Tier(name="monthly", limit=100_000_000, window=30 * 86_400, algorithm="fixed_window")
"""(limit + cost) * window_ms is about 2^58: beyond what Lua's doubles count exactly."""


class ValidatingStore(MemoryStore):
    """A memory store that records what it is asked to validate and how often it is hit."""

    def __init__(self) -> None:
        super().__init__()
        self.validated: list[RateLimitHit] = []
        self.hits = 0

    def validate_hit(self, hit: RateLimitHit) -> None:
        self.validated.append(hit)
        if hit.limit > 1_000:
            raise ConfigurationError(f"tier {hit.key!r} is too large for this store")

    async def hit(self, hits: Sequence[RateLimitHit]) -> list[RateLimitDecision]:
        self.hits += 1
        return await super().hit(hits)


def _middleware(store: object, *tiers: Tier) -> RateLimitMiddleware:
    return RateLimitMiddleware(
        echo_app,
        store=store,  # type: ignore[arg-type]
        settings=RateLimitSettings(tiers=tiers),
    )


async def test_redis_store_refuses_an_inexact_tier_at_construction() -> None:
    """RedisStore with a tier past 2**50: ConfigurationError naming the tier, before any request."""
    store = RedisStore(url="redis://127.0.0.1:1/0")  # never contacted: validation is local
    try:
        assert isinstance(store, TierValidatingStore)
        with pytest.raises(ConfigurationError, match=r"'monthly'.*2\*\*50"):
            _middleware(store, Tier(name="burst", limit=10, window=1), HUGE)
        _middleware(store, Tier(name="burst", limit=10, window=1))  # in range: accepted
    finally:
        await store.aclose()


async def test_store_without_validation_accepts_any_tier() -> None:
    """MemoryStore counts with Python integers: it offers no validation and takes the tier."""
    store = MemoryStore()
    assert not isinstance(store, TierValidatingStore)
    app = _middleware(store, HUGE)
    assert (await call(app))[0] == 200


async def test_every_tier_is_validated_once_with_its_quota() -> None:
    """Each tier reaches validate_hit once, as its name, algorithm, limit, window and cost."""
    store = ValidatingStore()
    tiers = (
        Tier(name="burst", limit=10, window=1, algorithm="gcra", cost=2),
        Tier(name="daily", limit=500, window=86_400),
    )
    app = _middleware(store, *tiers)
    assert store.validated == [
        RateLimitHit("burst", "gcra", 10, 1_000, 2),
        RateLimitHit("daily", "sliding_window", 500, 86_400_000, 1),
    ]
    assert (await call(app))[0] == 200
    assert store.hits == 1
    assert len(store.validated) == 2  # requests are not validated again


async def test_a_refused_tier_stops_construction() -> None:
    """The store's own ConfigurationError propagates unchanged from the constructor."""
    with pytest.raises(ConfigurationError, match="'big' is too large"):
        _middleware(ValidatingStore(), Tier(name="big", limit=5_000, window=60))
