"""Concurrency tiers: at most N requests of a key in flight, slots held as leases."""

from __future__ import annotations

from functools import partial
from typing import Any

import anyio
import httpx
import pytest

from bastion import (
    ConfigurationError,
    IdempotencyMiddleware,
    RateLimitMiddleware,
    RateLimitSettings,
    Tier,
)
from bastion.stores import MemoryStore
from bastion.typing import Message, Receive, Scope, Send
from tests.asgi import http_scope
from tests.conftest import FakeClock
from tests.ratelimit.conftest import client
from tests.ratelimit.feature_stores import any_store

pytestmark = pytest.mark.anyio
__all__ = ["any_store"]


class Gate:
    """An app whose requests wait until let go, or until their client leaves."""

    def __init__(self) -> None:
        self.inside = 0
        self.entered = anyio.Event()
        self.two_inside = anyio.Event()
        self.open = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.inside += 1
        self.entered.set()
        if self.inside == 2:
            self.two_inside.set()
        try:
            if scope["path"] == "/leave":
                while (await receive())["type"] != "http.disconnect":
                    pass
                return
            if scope["path"] == "/raise":
                raise RuntimeError("handler failed")
            await self.open.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"done"})
        finally:
            self.inside -= 1


def _note_renewals(store: Any) -> anyio.Event:
    """An event set once ``store`` has renewed slots."""
    renewed = anyio.Event()
    inner_renew = store.renew_slots

    async def renew(keys: Any, token: str, *, lease_ms: int) -> bool:
        ok = await inner_renew(keys, token, lease_ms=lease_ms)
        renewed.set()
        return bool(ok)

    store.renew_slots = renew
    return renewed


def guarded(app: Any, store: Any, limit: int = 2, **settings: Any) -> RateLimitMiddleware:
    tier = Tier.concurrent("inflight", limit)
    return RateLimitMiddleware(
        app, store=store, settings=RateLimitSettings(tiers=(tier,), **settings)
    )


async def test_at_most_n_in_flight_then_a_slot_frees(any_store: Any) -> None:
    """Two requests hold the two slots; a third is refused with ``concurrent-requests``
    fields; once they end, their slots are back."""
    gate = Gate()
    app = guarded(gate, any_store)
    async with client(app) as http:
        held: list[httpx.Response] = []

        async def hold() -> None:
            held.append(await http.get("/"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(hold)
            tg.start_soon(hold)
            with anyio.fail_after(30):
                await gate.two_inside.wait()
            refused = await http.get("/")
            gate.open.set()
        after = await http.get("/")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["ratelimit-policy"] == '"inflight";q=2;qu="concurrent-requests"'
    assert refused.headers["ratelimit"] == '"inflight";r=0'
    assert refused.json()["violated-policies"] == ["inflight"]
    assert sorted(r.headers["ratelimit"] for r in held) == ['"inflight";r=0', '"inflight";r=1']
    assert after.status_code == 200
    assert after.headers["ratelimit"] == '"inflight";r=1'


async def test_a_slot_is_given_back_when_the_client_leaves_or_the_handler_fails(
    any_store: Any,
) -> None:
    """A request whose client disconnects, or whose handler raises, releases its slot."""
    gate = Gate()
    gate.open.set()
    app = guarded(gate, any_store, limit=1)

    async def leave(scope: Scope) -> None:
        async def receive() -> Message:
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            return None

        await app(scope, receive, send)

    await leave(http_scope("GET", "/leave"))
    with pytest.raises(RuntimeError):
        await leave(http_scope("GET", "/raise"))
    async with client(app) as http:
        assert (await http.get("/")).status_code == 200
    assert any_store.calls == ["acquire", "release"] * 3


async def test_a_running_request_renews_its_slot(any_store: Any, clock: FakeClock) -> None:
    """A request outliving its lease keeps its slot, renewed while it runs; were it not
    renewed, the lease would have run out and a second request been let in."""
    gate = Gate()
    renewed = _note_renewals(any_store)
    app = guarded(gate, any_store, limit=1, concurrency_lease=1)
    async with client(app) as http, anyio.create_task_group() as tg:
        tg.start_soon(http.get, "/")
        await gate.entered.wait()
        clock.advance(0.8)
        with anyio.fail_after(30):
            await renewed.wait()
        clock.advance(0.7)  # past the first lease's end, inside the renewed one
        refused = await http.get("/")
        gate.open.set()
    assert refused.status_code == 429


async def test_a_rate_tier_refusal_gives_the_slot_back(any_store: Any) -> None:
    """Slots are taken first; a request a rate tier refuses returns its slot at once."""
    gate = Gate()
    gate.open.set()
    tiers = (Tier.concurrent("inflight", 1), Tier(name="rate", limit=1, window=60))
    app = RateLimitMiddleware(gate, store=any_store, settings=RateLimitSettings(tiers=tiers))
    async with client(app) as http:
        ok = await http.get("/")
        refused = await http.get("/")
    assert (ok.status_code, refused.status_code) == (200, 429)
    assert refused.json()["violated-policies"] == ["rate"]
    assert (
        ok.headers["ratelimit-policy"] == '"rate";q=1;w=60, "inflight";q=1;qu="concurrent-requests"'
    )
    assert any_store.calls == ["acquire", "hit", "release"] * 2


def test_a_store_without_slots_is_refused_at_start_up() -> None:
    """A concurrency tier on a store that cannot hold slots fails when the app is built."""

    class RateOnly:
        backend = "x"

        async def ping(self) -> None: ...
        async def aclose(self) -> None: ...
        async def hit(self, hits: Any) -> Any: ...

    with pytest.raises(ConfigurationError, match="concurrency"):
        guarded(Gate(), RateOnly())


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_keyed_request_admitted_after_its_claim_renews_its_slot(
    anyio_backend: str, clock: FakeClock
) -> None:
    """The limiter outside an idempotency layer takes a keyed request's slot once its claim
    shows it fresh, mid-request: the slot is renewed while it runs, on trio as on asyncio."""
    store = MemoryStore(clock=clock)
    gate = Gate()
    renewed = _note_renewals(store)
    app = guarded(IdempotencyMiddleware(gate, store=store), store, limit=1, concurrency_lease=1)
    keyed = {"idempotency-key": "first"}
    async with client(app) as http, anyio.create_task_group() as tg:
        tg.start_soon(partial(http.post, "/", content=b"{}", headers=keyed))
        await gate.entered.wait()
        clock.advance(0.8)
        with anyio.fail_after(30):
            await renewed.wait()
        clock.advance(0.7)  # past the first lease's end, inside the renewed one
        refused = await http.post("/", content=b"{}", headers={"idempotency-key": "second"})
        gate.open.set()
    assert refused.status_code == 429
