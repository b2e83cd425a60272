"""Testing your own app with `bastion.testing`: replays, 409, 422, 429 and a store outage.

    python examples/testing_app.py          # runs every check below and prints what held

The same functions run under pytest as they are (with ``pytest.mark.anyio`` or
``anyio_backend``); ``docs/testing.md`` walks through them.
"""

from __future__ import annotations

import anyio
import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bastion import (
    IdempotencyMiddleware,
    IdempotencySettings,
    RateLimitMiddleware,
    RateLimitSettings,
    Tier,
)
from bastion.stores import MemoryStore
from bastion.testing import (
    FakeClock,
    FaultyStore,
    assert_conflict,
    assert_mismatch,
    assert_rate_limited,
    assert_replayed,
)


def create_app(store: object) -> Starlette:
    """A small orders API: idempotent POSTs, three orders a minute per client."""
    count = 0

    async def create_order(request: Request) -> JSONResponse:
        nonlocal count
        count += 1
        payload = await request.json()
        return JSONResponse({"order": count, **payload}, status_code=201)

    return Starlette(
        routes=[Route("/orders", create_order, methods=["POST"])],
        middleware=[
            Middleware(
                RateLimitMiddleware,
                store=store,
                settings=RateLimitSettings(
                    tiers=(Tier(name="orders", limit=3, window=60, algorithm="fixed_window"),)
                ),
            ),
            Middleware(IdempotencyMiddleware, store=store, settings=IdempotencySettings()),
        ],
    )


app = create_app(MemoryStore())


def client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test")


async def check_replay_and_mismatch() -> None:
    """A retry is replayed; the same key with another body is refused with 422."""
    async with client(create_app(MemoryStore())) as c:
        key = {"Idempotency-Key": "order-1"}
        first = await c.post("/orders", json={"sku": "tea"}, headers=key)
        assert_replayed(await c.post("/orders", json={"sku": "tea"}, headers=key), first)
        assert_mismatch(await c.post("/orders", json={"sku": "cake"}, headers=key))


async def check_conflict_while_running() -> None:
    """A duplicate sent while the first request runs gets 409 with Retry-After."""
    store = FaultyStore(MemoryStore())
    # the first request's write of its response waits, so it keeps the key meanwhile
    held = store.hang("complete")
    key = {"Idempotency-Key": "order-2"}
    async with client(create_app(store)) as c, anyio.create_task_group() as tg:

        async def first() -> None:
            assert (await c.post("/orders", json={}, headers=key)).status_code == 201

        tg.start_soon(first)
        await held.entered.wait()  # the first request is in flight
        assert_conflict(await c.post("/orders", json={}, headers=key))
        held.release()


async def check_rate_limit_window() -> None:
    """The fourth order in a minute gets 429; in the next minute orders pass again."""
    clock = FakeClock()
    async with client(create_app(MemoryStore(clock=clock))) as c:
        for _ in range(3):
            assert (await c.post("/orders", json={})).status_code == 201
        assert_rate_limited(await c.post("/orders", json={}), policy="orders")
        clock.advance(60)
        assert (await c.post("/orders", json={})).status_code == 201


async def check_store_outage() -> None:
    """With the store down, keyed requests get 503 and rate limits fail open."""
    store = FaultyStore(MemoryStore())
    store.fail("claim")
    store.fail("hit")
    async with client(create_app(store)) as c:
        keyed = await c.post("/orders", json={}, headers={"Idempotency-Key": "order-3"})
        assert keyed.status_code == 503
        assert (await c.post("/orders", json={})).status_code == 201
        store.heal()
        keyed = await c.post("/orders", json={}, headers={"Idempotency-Key": "order-3"})
        assert keyed.status_code == 201


CHECKS = (
    check_replay_and_mismatch,
    check_conflict_while_running,
    check_rate_limit_window,
    check_store_outage,
)


async def main() -> None:
    for check in CHECKS:
        await check()
        print(f"ok  {check.__doc__}")


if __name__ == "__main__":
    anyio.run(main)
