"""Per-key overrides: a tier's limit from an async provider, cached, failing safe."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from bastion import Tier
from bastion.ratelimit import LimitOverrides, keys
from tests.conftest import FakeClock
from tests.ratelimit.conftest import client, limited
from tests.ratelimit.feature_stores import any_store

pytestmark = pytest.mark.anyio
__all__ = ["any_store"]

API_KEY = keys.header("x-api-key", hashed=False)


class Plans:
    """A plan lookup that counts its calls: premium keys get 10."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, key: str) -> int | None:
        self.calls.append(key)
        return 10 if key.endswith("=premium") else None


async def test_a_premium_key_gets_its_own_limit(any_store: Any, clock: FakeClock) -> None:
    """The provider's limit applies to its key, in the quota and the policy; other keys keep
    the static limit, and each key is looked up once while cached."""
    plans = Plans()
    tier = Tier(
        name="api", limit=1, window=60, key=API_KEY, overrides=LimitOverrides(plans, clock=clock)
    )
    app = limited(tier, store=any_store)
    async with client(app) as http:
        premium = [await http.get("/", headers={"x-api-key": "premium"}) for _ in range(11)]
        basic = [await http.get("/", headers={"x-api-key": "basic"}) for _ in range(2)]
    assert [r.status_code for r in premium] == [200] * 10 + [429]
    assert premium[0].headers["ratelimit-policy"] == '"api";q=10;w=60'
    assert [r.status_code for r in basic] == [200, 429]
    assert basic[0].headers["ratelimit-policy"] == '"api";q=1;w=60'
    assert plans.calls == ["hdr:x-api-key=premium", "hdr:x-api-key=basic"]
    assert any_store.calls == ["hit"] * 13


async def test_answers_are_cached_for_the_ttl(clock: FakeClock) -> None:
    """Within the TTL the cached answer is used; after it, the provider is asked again."""
    answers = [5, 7]
    calls: list[str] = []

    async def provider(key: str) -> int:
        calls.append(key)
        return answers[len(calls) - 1]

    overrides = LimitOverrides(provider, ttl=30, clock=clock)
    assert await overrides.limit("k", 1) == 5
    clock.advance(29)
    assert await overrides.limit("k", 1) == 5
    clock.advance(2)
    assert await overrides.limit("k", 1) == 7
    assert calls == ["k", "k"]


async def test_a_failing_or_slow_provider_falls_back_to_the_static_limit(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception, a timeout or a bad answer gives the static limit and a warning, never a
    500; the failure is remembered for failure_ttl."""
    calls: list[str] = []
    never = anyio.Event()

    async def provider(key: str) -> Any:
        calls.append(key)
        if key.endswith("=boom"):
            raise RuntimeError("plan service down")
        if key.endswith("=slow"):
            await never.wait()
        return "lots"

    tier = Tier(
        name="api",
        limit=1,
        window=60,
        key=API_KEY,
        overrides=LimitOverrides(provider, timeout=0, failure_ttl=5, clock=clock),
    )
    app = limited(tier)
    with caplog.at_level(logging.WARNING, logger="bastion.ratelimit"):
        async with client(app) as http:
            for name in ("boom", "slow", "odd"):
                first = await http.get("/", headers={"x-api-key": name})
                second = await http.get("/", headers={"x-api-key": name})
                assert (first.status_code, second.status_code) == (200, 429)
                assert first.headers["ratelimit-policy"] == '"api";q=1;w=60'
    assert len(calls) == 3  # each failure kept for failure_ttl
    assert any("using the static limit" in r.getMessage() for r in caplog.records)


async def test_concurrent_requests_share_one_lookup(clock: FakeClock) -> None:
    """Requests for a key not yet cached wait for a single lookup."""
    release = anyio.Event()
    calls: list[str] = []

    async def provider(key: str) -> int:
        calls.append(key)
        await release.wait()
        return 3

    overrides = LimitOverrides(provider, clock=clock)
    results: list[int] = []

    async def ask() -> None:
        results.append(await overrides.limit("k", 1))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(ask)
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert results == [3] * 5
    assert calls == ["k"]
