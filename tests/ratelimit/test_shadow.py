"""Shadow mode: tiers decided, counted and logged, never enforced, never changing real tiers."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from bastion import Tier
from bastion.stores import MemoryStore
from tests.conftest import FakeClock
from tests.ratelimit.conftest import RecordingObserver, broken_store, client, limited
from tests.ratelimit.feature_stores import any_store

pytestmark = pytest.mark.anyio
__all__ = ["any_store"]


async def test_a_shadow_tier_never_refuses_and_sends_no_fields(
    any_store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A shadow tier over its limit lets requests through with no RateLimit fields, counting
    and logging each one it would have refused."""
    observer = RecordingObserver()
    app = limited(
        Tier(name="new", limit=2, window=60, shadow=True), store=any_store, observer=observer
    )
    with caplog.at_level(logging.INFO, logger="bastion.ratelimit"):
        async with client(app) as http:
            responses = [await http.get("/") for _ in range(5)]
    assert [r.status_code for r in responses] == [200] * 5
    assert not any("ratelimit" in r.headers or "ratelimit-policy" in r.headers for r in responses)
    assert [o for _, o in observer.decisions] == ["allowed"] * 2 + ["would_limit"] * 3
    assert sum("shadow tier new would limit" in r.getMessage() for r in caplog.records) == 3


async def test_a_shadow_tier_charges_a_real_tier_neither_more_nor_less(
    any_store: Any, clock: FakeClock
) -> None:
    """Beside a tighter shadow tier, a real tier answers exactly as it does alone: the same
    statuses and the same fields, naming only itself."""
    real = Tier(name="real", limit=3, window=60)
    shadow = Tier(name="shadow", limit=1, window=60, shadow=True)
    seen = []
    for app in (
        limited(real, shadow, store=any_store),
        limited(real, store=MemoryStore(clock=clock)),
    ):
        async with client(app) as http:
            responses = [await http.get("/") for _ in range(5)]
        seen.append(
            [
                (r.status_code, r.headers["ratelimit"], r.headers["ratelimit-policy"])
                for r in responses
            ]
        )
    assert seen[0] == seen[1]
    assert [status for status, _, _ in seen[0]] == [200, 200, 200, 429, 429]
    assert {policy for _, _, policy in seen[0]} == {'"real";q=3;w=60'}
    # one call when both allow (1st), a second when the shadow tier alone refuses (2nd, 3rd),
    # one when the real tier refuses (4th, 5th)
    assert any_store.calls == ["hit"] * 7


async def test_global_shadow_mode_lets_everything_through(any_store: Any) -> None:
    """``RateLimitSettings(shadow=True)`` turns every tier into a shadow tier."""
    observer = RecordingObserver()
    app = limited(
        Tier(name="t", limit=1, window=60), store=any_store, observer=observer, shadow=True
    )
    async with client(app) as http:
        statuses = [(await http.post("/")).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert [o for _, o in observer.decisions] == ["allowed", "would_limit", "would_limit"]


async def test_a_shadow_tier_never_fails_closed() -> None:
    """A store outage lets a request through when only shadow tiers would fail closed."""
    app = limited(
        Tier(name="s", limit=1, window=60, shadow=True, fail_open=False), store=broken_store()
    )
    async with client(app) as http:
        assert (await http.get("/")).status_code == 200
