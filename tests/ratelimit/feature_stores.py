"""The stores the rate-limit feature tests run on through HTTP, and a store that counts calls.

The rows come from the one store table (`tests.stores.conftest.STORES`): the memory store,
fakeredis, real Redis and PostgreSQL (SQLite and MySQL are covered by the conformance suite).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from tests.conftest import FakeClock
from tests.stores.conftest import STORES

FEATURE_STORES = [p for p in STORES if p.id in {"memory", "fakeredis", "redis", "postgres"}]


@pytest.fixture(params=FEATURE_STORES)
async def any_store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Any]:
    """Each backend in turn, fresh and empty, on the test's fake clock."""
    async with request.param(clock) as store:
        yield CallCounter(store)


class CallCounter:
    """Passes every primitive to ``inner`` and records the operations, in order."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.backend = inner.backend
        self.calls: list[str] = []

    async def ping(self) -> None:
        await self.inner.ping()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def hit(self, hits: Sequence[Any]) -> Any:
        self.calls.append("hit")
        return await self.inner.hit(hits)

    async def acquire_slots(self, slots: Sequence[Any], token: str, *, lease_ms: int) -> Any:
        self.calls.append("acquire")
        return await self.inner.acquire_slots(slots, token, lease_ms=lease_ms)

    async def renew_slots(self, keys: Sequence[str], token: str, *, lease_ms: int) -> bool:
        self.calls.append("renew")
        return bool(await self.inner.renew_slots(keys, token, lease_ms=lease_ms))

    async def release_slots(self, keys: Sequence[str], token: str) -> None:
        self.calls.append("release")
        await self.inner.release_slots(keys, token)

    def validate_hit(self, hit: Any) -> None:
        validate = getattr(self.inner, "validate_hit", None)
        if validate is not None:
            validate(hit)
