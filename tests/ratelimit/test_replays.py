"""Idempotency and rate limits together: replays and in-flight 409s never cost quota twice.

Both orders run on every HTTP-tested backend: the limiter inside the idempotency layer (which
answers replays before the limiter sees them) and outside it (the README's order: the limiter
leaves keyed requests' charge for the idempotency layer to settle, `bastion.ratelimit._gate`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from bastion import (
    IdempotencyMiddleware,
    IdempotencySettings,
    RateLimitMiddleware,
    RateLimitSettings,
    Tier,
)
from bastion.exceptions import ConfigurationError
from bastion.ratelimit.keys import json_field
from bastion.stores import MemoryStore
from bastion.typing import Receive, Scope, Send
from tests.conftest import FakeClock
from tests.ratelimit.conftest import client
from tests.ratelimit.feature_stores import FEATURE_STORES

pytestmark = pytest.mark.anyio

ORDERS = ["limit-outside", "idempotency-outside"]


@pytest.fixture(params=FEATURE_STORES)
async def both_store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Any]:
    """Each backend in turn, holding both the idempotency records and the buckets."""
    async with request.param(clock) as store:
        yield store


class Handler:
    """Counts runs; a request whose key is in ``blocking`` waits for ``release``."""

    def __init__(self) -> None:
        self.runs = 0
        self.blocking: set[bytes] = set()
        self.started = anyio.Event()
        self.release = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body", False):
            pass
        self.runs += 1
        run = self.runs
        key = dict(scope["headers"]).get(b"idempotency-key")
        if key in self.blocking:
            self.started.set()
            await self.release.wait()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"run %d" % run})


def stack(order: str, handler: Any, store: Any, *tiers: Tier, **settings: Any) -> Any:
    limits = RateLimitSettings(tiers=tiers, **settings)
    idem = IdempotencySettings()
    if order == "limit-outside":
        inner = IdempotencyMiddleware(handler, store=store, settings=idem)
        return RateLimitMiddleware(inner, store=store, settings=limits)
    inner = RateLimitMiddleware(handler, store=store, settings=limits)
    return IdempotencyMiddleware(inner, store=store, settings=idem)


def fresh(limit: int) -> Tier:
    return Tier(name="writes", limit=limit, window=60, algorithm="fixed_window")


async def post(http: httpx.AsyncClient, key: str | None, body: bytes = b"{}") -> httpx.Response:
    headers = {} if key is None else {"idempotency-key": key}
    return await http.post("/pay", content=body, headers=headers)


@pytest.mark.parametrize("order", ORDERS)
async def test_replays_and_conflicts_never_spend_the_limit(order: str, both_store: Any) -> None:
    """N fresh keyed requests, M replays and K in-flight 409s against a limit of N: every
    replay is served (none is 429, even once the limit is spent), every duplicate in flight
    gets 409, and the N+1-th fresh request is 429."""
    n, m, k = 3, 5, 3
    handler = Handler()
    handler.blocking.add(b"k3")
    app = stack(order, handler, both_store, fresh(n))
    async with client(app) as http, anyio.create_task_group() as tg:
        first = [await post(http, "k1"), await post(http, "k2")]
        held: list[httpx.Response] = []

        async def hold() -> None:
            held.append(await post(http, "k3"))

        tg.start_soon(hold)
        await handler.started.wait()
        conflicts = [await post(http, "k3") for _ in range(k)]
        replays = [await post(http, f"k{1 + i % 2}") for i in range(m)]
        handler.release.set()
    async with client(app) as http:
        late_replays = [await post(http, f"k{1 + i % 3}") for i in range(m)]
        over = await post(http, "k4")
        unkeyed = await post(http, None)
    assert [r.status_code for r in first + held] == [201] * n
    assert [r.status_code for r in conflicts] == [409] * k
    assert all(r.headers["retry-after"] == "1" for r in conflicts)
    for response in replays + late_replays:
        assert response.status_code == 201, response.text
        assert response.headers["idempotent-replayed"] == "true"
    assert over.status_code == 429
    assert over.json()["violated-policies"] == ["writes"]
    assert unkeyed.status_code == 429
    assert handler.runs == n


@pytest.mark.parametrize("order", ORDERS)
async def test_a_refused_fresh_request_runs_when_retried_after_the_window(
    order: str, clock: FakeClock
) -> None:
    """A keyed request the limit refuses leaves its key free: retried once the window has
    passed, it runs (and is not a 409 or a replay of the 429)."""
    store = MemoryStore(clock=clock)
    handler = Handler()
    app = stack(order, handler, store, fresh(1))
    async with client(app) as http:
        assert (await post(http, "a")).status_code == 201
        refused = await post(http, "b")
        clock.advance(61)
        retried = await post(http, "b")
    assert refused.status_code == 429
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers
    assert handler.runs == 2


async def test_limit_outside_sends_the_fields_of_the_charge_on_a_fresh_keyed_request(
    clock: FakeClock,
) -> None:
    """With the limiter outside, a fresh keyed request carries the RateLimit fields of its
    charge; a replay carries none (nothing was decided for it)."""
    app = stack("limit-outside", Handler(), MemoryStore(clock=clock), fresh(5))
    async with client(app) as http:
        first = await post(http, "a")
        replay = await post(http, "a")
    assert first.headers["ratelimit"].startswith('"writes";r=4')
    assert first.headers["ratelimit-policy"] == '"writes";q=5;w=60'
    assert replay.headers["idempotent-replayed"] == "true"
    assert "ratelimit" not in replay.headers


@pytest.mark.parametrize("order", ORDERS)
async def test_a_replay_tier_charges_answers_generously_and_apart(
    order: str, both_store: Any
) -> None:
    """``replay_tier`` charges what the idempotency layer answers when the limiter is outside
    (its 429 names it, and fresh requests are not charged to it); inside, the limiter never
    sees a replay, so replays stay free."""
    replays = Tier(name="replays", limit=3, window=60, algorithm="fixed_window")
    handler = Handler()
    app = stack(order, handler, both_store, fresh(2), replay_tier=replays)
    async with client(app) as http:
        assert (await post(http, "a")).status_code == 201
        answered = [await post(http, "a") for _ in range(4)]
        second = await post(http, "b")
    statuses = [r.status_code for r in answered]
    assert second.status_code == 201
    if order == "limit-outside":
        assert statuses == [201, 201, 201, 429]
        assert answered[-1].json()["violated-policies"] == ["replays"]
        assert answered[0].headers["ratelimit"].startswith('"replays";r=2')
    else:
        assert statuses == [201] * 4
    assert handler.runs == 2


async def test_limit_outside_does_not_charge_a_reused_key_or_a_bad_key(clock: FakeClock) -> None:
    """422 (a key reused for another body) and 400 (an invalid key) are answers of the
    idempotency layer: they spend nothing of the normal tiers."""
    handler = Handler()
    app = stack("limit-outside", handler, MemoryStore(clock=clock), fresh(1))
    async with client(app) as http:
        assert (await post(http, "a")).status_code == 201
        mismatches = [await post(http, "a", b'{"other": 1}') for _ in range(3)]
        invalid = [await post(http, "\x01bad") for _ in range(3)]
    assert [r.status_code for r in mismatches] == [422] * 3
    assert [r.status_code for r in invalid] == [400] * 3
    assert handler.runs == 1


async def test_limit_outside_keeps_concurrency_slots_for_fresh_requests_only(
    clock: FakeClock,
) -> None:
    """A concurrency tier outside the idempotency layer: duplicates of the request holding
    the only slot get 409 (not 429), a replay after it ends is served, and the slot is given
    back when the request ends."""
    store = MemoryStore(clock=clock)
    handler = Handler()
    handler.blocking.add(b"slow")
    app = stack("limit-outside", handler, store, Tier.concurrent("inflight", 1))
    async with client(app) as http, anyio.create_task_group() as tg:
        held: list[httpx.Response] = []

        async def hold() -> None:
            held.append(await post(http, "slow"))

        tg.start_soon(hold)
        await handler.started.wait()
        duplicate = await post(http, "slow")
        other = await post(http, "other")
        handler.release.set()
    async with client(app) as http:
        replay = await post(http, "slow")
        after = await post(http, "after")
    assert duplicate.status_code == 409
    assert other.status_code == 429
    assert held[0].status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert after.status_code == 201


async def test_an_answer_between_the_two_middleware_is_still_charged(clock: FakeClock) -> None:
    """A middleware between the limiter and the idempotency layer that answers a keyed
    request itself (here a 401) never reaches the idempotency decision: the limiter charges
    it afterwards, so such requests still spend the limit."""
    store = MemoryStore(clock=clock)

    class Auth:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if (b"authorization", b"ok") not in scope["headers"]:
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
            await self.app(scope, receive, send)

    inner = IdempotencyMiddleware(Handler(), store=store)
    app = RateLimitMiddleware(
        Auth(inner), store=store, settings=RateLimitSettings(tiers=(fresh(2),))
    )
    async with client(app) as http:
        denied = [await post(http, f"k{i}") for i in range(2)]
        after = await http.post("/pay", headers={"authorization": "ok"})
    assert [r.status_code for r in denied] == [401, 401]
    assert after.status_code == 429


def test_the_replay_tier_must_be_plain() -> None:
    """A replay tier with a feature it cannot honour, or a taken name, is refused at start."""
    with pytest.raises(ConfigurationError, match="plain tier"):
        RateLimitSettings(
            tiers=(fresh(1),),
            replay_tier=Tier(name="r", limit=9, window=60, key=json_field("wallet")),
        )
    with pytest.raises(ConfigurationError, match="taken"):
        RateLimitSettings(tiers=(fresh(1),), replay_tier=fresh(9))


async def test_limit_outside_answers_conflicting_key_headers_with_400(clock: FakeClock) -> None:
    """Two different Idempotency-Key headers reach the idempotency layer's 400 through the
    limiter outside it, never a 500, and spend nothing."""
    app = stack("limit-outside", Handler(), MemoryStore(clock=clock), fresh(1))
    headers = [("idempotency-key", "a"), ("idempotency-key", "b")]
    async with client(app) as http:
        twice = [await http.post("/pay", content=b"{}", headers=headers) for _ in range(2)]
        fresh_one = await post(http, "c")
    assert [r.status_code for r in twice] == [400, 400]
    assert fresh_one.status_code == 201


async def test_global_shadow_mode_shadows_the_replay_tier_too(clock: FakeClock) -> None:
    """With ``shadow=True`` the replay tier only counts: replays past its limit are served,
    and reported as ``would_limit``."""
    seen: list[tuple[str, str]] = []

    class Seen:
        def idempotency(self, scope: Scope, outcome: str) -> None: ...

        def rate_limit(self, scope: Scope, tier: str, outcome: str) -> None:
            seen.append((tier, outcome))

        def store_call(self, *args: Any, **kwargs: Any) -> None: ...

    store = MemoryStore(clock=clock)
    replays = Tier(name="replays", limit=1, window=60)
    inner = IdempotencyMiddleware(Handler(), store=store)
    settings = RateLimitSettings(tiers=(fresh(5),), replay_tier=replays, shadow=True)
    app = RateLimitMiddleware(inner, store=store, settings=settings, observer=Seen())
    async with client(app) as http:
        answers = [await post(http, "a") for _ in range(3)]
    assert [r.status_code for r in answers] == [201] * 3
    assert all("ratelimit" not in r.headers for r in answers[1:])
    assert [o for t, o in seen if t == "replays"] == ["allowed", "would_limit"]
