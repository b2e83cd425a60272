"""Count-on-response: a tier charges only responses that match, decided before the next."""

from __future__ import annotations

from typing import Any

import pytest

from bastion import RateLimitMiddleware, RateLimitSettings, Tier
from bastion.typing import Receive, Scope, Send
from tests.ratelimit.conftest import client
from tests.ratelimit.feature_stores import any_store

pytestmark = pytest.mark.anyio
__all__ = ["any_store"]


async def login(scope: Scope, receive: Receive, send: Send) -> None:
    """401 unless the password header is right."""
    ok = (b"x-password", b"right") in scope["headers"]
    await send({"type": "http.response.start", "status": 200 if ok else 401, "headers": []})
    await send({"type": "http.response.body", "body": b"ok" if ok else b"no"})


def guarded(store: Any) -> RateLimitMiddleware:
    tier = Tier(name="failures", limit=3, window=900, algorithm="fixed_window", count_when={401})
    return RateLimitMiddleware(login, store=store, settings=RateLimitSettings(tiers=(tier,)))


async def test_only_failures_are_counted_and_then_everything_is_refused(any_store: Any) -> None:
    """Successes cost nothing; three 401s exhaust the bucket (each charged before its status
    is forwarded, so its own fields show the charge) and the next request is refused, even
    with the right password."""
    app = guarded(any_store)
    async with client(app) as http:
        successes = [await http.get("/", headers={"x-password": "right"}) for _ in range(5)]
        failures = [await http.get("/") for _ in range(3)]
        refused = await http.get("/", headers={"x-password": "right"})
    assert {r.status_code for r in successes} == {200}
    assert {r.headers["ratelimit"] for r in successes} == {'"failures";r=3;t=0'}
    assert [r.status_code for r in failures] == [401, 401, 401]
    assert [r.headers["ratelimit"].split(";t=")[0] for r in failures] == [
        '"failures";r=2',
        '"failures";r=1',
        '"failures";r=0',
    ]
    assert refused.status_code == 429
    assert refused.json()["violated-policies"] == ["failures"]
    # one call before each request, one more after each 401, none after the refusal
    assert any_store.calls == ["hit"] * (5 + 3 * 2 + 1)


async def test_a_callable_decides_what_counts() -> None:
    """``count_when`` may be a function of the status."""
    tier = Tier(name="errors", limit=1, window=60, count_when=lambda status: status >= 400)
    app = RateLimitMiddleware(login, store=_memory(), settings=RateLimitSettings(tiers=(tier,)))
    async with client(app) as http:
        assert (await http.get("/")).status_code == 401
        assert (await http.get("/")).status_code == 429


def _memory() -> Any:
    from bastion.stores import MemoryStore

    return MemoryStore()
