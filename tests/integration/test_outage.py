"""Store outages through the whole middleware stack: no 500s, each policy honoured, and
service back on its own once the server returns.

One app, built once: `RateLimitMiddleware` (a fail-open tier, a fail-closed tier, and a
fail-open tier in front of the idempotent routes) outside two `IdempotencyMiddleware` (the
default, failing closed, on ``/orders``; one with ``fail_open=True`` on ``/lenient``), all over
one store. The server is a private one the test starts on a free port and kills, never the
shared one: a private ``redis-server``, or a throw-away PostgreSQL cluster (``initdb`` and
``pg_ctl``). After the restart the same app and store objects serve again; the restarted Redis
has lost its scripts, so its first calls go through NOSCRIPT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bastion import (
    IdempotencyMiddleware,
    IdempotencySettings,
    RateLimitMiddleware,
    RateLimitSettings,
    Tier,
)
from bastion.stores import _redis_client
from bastion.stores._breaker import CircuitBreaker
from bastion.stores._redis import DEFAULT_TIMEOUT, RedisStore
from bastion.typing import ASGIApp
from tests.conftest import FakeClock
from tests.stores.postgres_support import private_postgres
from tests.stores.redis_support import private_redis

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

LIMIT = 3
PROBLEM = "application/problem+json"
SCRIPTS = ("claim", "complete", "hit")
"""The scripts normal service runs (release and renew only serve failures and long handlers)."""


class Outage:
    """The app under test and what its handlers did: (route, body) for every run."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.handled: list[str] = []
        self.app = self._build(store)

    def _build(self, store: Any) -> ASGIApp:
        async def write(request: Request) -> Response:
            self.handled.append(request.url.path)
            return JSONResponse({"run": len(self.handled)})

        async def ok(request: Request) -> Response:
            return PlainTextResponse("ok")

        routes = Starlette(
            routes=[
                Route("/open", ok, methods=["POST"]),
                Route("/closed", ok, methods=["POST"]),
                Route("/orders", write, methods=["POST"]),
                Route("/lenient", write, methods=["POST"]),
                Route("/healthz", ok),
            ]
        )
        strict = IdempotencyMiddleware(
            routes, store=store, settings=IdempotencySettings(include=("/orders",))
        )
        lenient = IdempotencyMiddleware(
            strict,
            store=store,
            settings=IdempotencySettings(include=("/lenient",), fail_open=True),
        )
        tiers = (
            Tier(name="open", limit=LIMIT, window=3600, routes="/open", fail_open=True),
            Tier(name="closed", limit=LIMIT, window=3600, routes="/closed", fail_open=False),
            Tier(name="writes", limit=100, window=3600, routes=("/orders", "/lenient")),
        )
        return RateLimitMiddleware(lenient, store=store, settings=RateLimitSettings(tiers=tiers))

    def client(self, peer: str) -> httpx.AsyncClient:
        """A client at its own address, so its rate-limit buckets start empty."""
        transport = httpx.ASGITransport(app=self.app, client=(peer, 50_000))
        return httpx.AsyncClient(transport=transport, base_url="http://test")


def _problem(response: httpx.Response, status: int, slug: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["retry-after"] == "1"
    assert response.json()["type"].endswith(slug)


async def _keyed(client: httpx.AsyncClient, path: str, key: str) -> httpx.Response:
    return await client.post(path, content=b'{"sku": "A-1"}', headers={"Idempotency-Key": key})


async def assert_normal_service(outage: Outage, peer: str) -> None:
    """Limits are counted and enforced, keys run once and replay, health answers."""
    async with outage.client(peer) as client:
        for route in ("/open", "/closed"):
            statuses = [(await client.post(route)).status_code for _ in range(LIMIT + 1)]
            assert statuses == [200] * LIMIT + [429], route
        for route in ("/orders", "/lenient"):
            runs = len(outage.handled)
            first = await _keyed(client, route, f"{peer}{route}")
            again = await _keyed(client, route, f"{peer}{route}")
            assert first.status_code == again.status_code == 200
            assert "idempotent-replayed" not in first.headers
            assert again.headers["idempotent-replayed"] == "true"
            assert again.content == first.content
            assert len(outage.handled) == runs + 1
            assert "ratelimit" in first.headers  # the writes tier was really decided
        assert (await client.get("/healthz")).status_code == 200


async def assert_degraded_service(outage: Outage, peer: str, stored_key: str) -> None:
    """With the store gone: fail-open routes serve, fail-closed ones answer 503, never 500."""
    async with outage.client(peer) as client:
        for _ in range(LIMIT + 2):  # beyond the limit: nothing is being counted
            response = await client.post("/open")
            assert response.status_code == 200
            assert "ratelimit" not in response.headers  # nothing is known, nothing is claimed
        _problem(await client.post("/closed"), 503, "rate-limit-store-unavailable")

        runs = len(outage.handled)
        _problem(await _keyed(client, "/orders", "during-outage"), 503, "store-unavailable")
        # a key stored before the outage is neither replayed nor run again
        _problem(await _keyed(client, "/orders", stored_key), 503, "store-unavailable")
        assert len(outage.handled) == runs
        lenient = await _keyed(client, "/lenient", "during-outage")
        assert lenient.status_code == 200
        assert "idempotent-replayed" not in lenient.headers
        assert outage.handled[runs:] == ["/lenient"]  # ran, unprotected, as configured
        assert (await client.get("/healthz")).status_code == 200

        # and a concurrent burst over every route: still no 500 anywhere
        expected = {"/open": 200, "/closed": 503, "/orders": 503, "/lenient": 200, "/healthz": 200}
        answers: list[tuple[str, int]] = []

        async def one(path: str, i: int) -> None:
            if path == "/healthz":
                response = await client.get(path)
            elif path in ("/orders", "/lenient"):
                response = await _keyed(client, path, f"burst-{i}")
            else:
                response = await client.post(path)
            answers.append((path, response.status_code))

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(one, list(expected)[i % len(expected)], i)
        assert len(answers) == 40
        assert all(status == expected[path] for path, status in answers), answers


# -- Redis ------------------------------------------------------------------------------------


async def _cached_scripts(url: str) -> list[bool]:
    admin = Redis.from_url(url)
    try:
        shas = [_redis_client._script(name).sha for name in SCRIPTS]
        return [bool(found) for found in await admin.script_exists(*shas)]
    finally:
        await admin.aclose()


@pytest.mark.redis
async def test_redis_outage_through_the_stack(tmp_path: Path, clock: FakeClock) -> None:
    """Redis killed: no 500, policies honoured; restarted empty: same app serves normally."""
    breaker_clock = FakeClock()
    with private_redis(tmp_path) as server:
        store = RedisStore(url=server.url, clock=clock, breaker=CircuitBreaker(clock=breaker_clock))
        try:
            # fail fast comes from the store's defaults: every part of a call bounded by the
            # call's timeout, redis-py retrying nothing, and the breaker skipping a dead server
            pool = store.client.connection_pool
            assert pool.connection_kwargs["socket_timeout"] == DEFAULT_TIMEOUT
            assert pool.connection_kwargs["socket_connect_timeout"] == DEFAULT_TIMEOUT
            assert pool.timeout == DEFAULT_TIMEOUT
            assert pool.connection_kwargs["retry"].get_retries() == 0

            outage = Outage(store)
            await assert_normal_service(outage, "198.51.100.1")
            assert await _cached_scripts(server.url) == [True] * len(SCRIPTS)

            server.stop()
            await assert_degraded_service(outage, "198.51.100.2", "198.51.100.1/orders")

            assert store.breaker.state == "open"
            server.start()  # same port, empty, and no script cached
            assert await _cached_scripts(server.url) == [False] * len(SCRIPTS)
            breaker_clock.advance(store.breaker.reset_after)  # the next call probes
            await assert_normal_service(outage, "198.51.100.3")  # through NOSCRIPT
            assert await _cached_scripts(server.url) == [True] * len(SCRIPTS)
        finally:
            await store.aclose()


# -- PostgreSQL -------------------------------------------------------------------------------


async def _sql_store(url: str, clock: FakeClock, breaker_clock: FakeClock) -> Any:
    from bastion.stores.sql import SQLStore

    store = SQLStore(url=url, clock=clock, breaker=CircuitBreaker(clock=breaker_clock))
    await store.create_tables()
    return store


@pytest.mark.postgres
async def test_postgres_outage_through_the_stack(clock: FakeClock) -> None:
    """PostgreSQL crashed: no 500, policies honoured; restarted: same app serves normally."""
    breaker_clock = FakeClock()
    with private_postgres() as server:
        store = await _sql_store(server.url, clock, breaker_clock)
        try:
            outage = Outage(store)
            await assert_normal_service(outage, "198.51.100.1")

            server.stop()  # immediate: every pooled connection is cut
            await assert_degraded_service(outage, "198.51.100.2", "198.51.100.1/orders")
            assert store.breaker.state == "open"  # the database is skipped, not waited for

            server.start()  # crash recovery; what was committed is still there
            breaker_clock.advance(store.breaker.reset_after)  # the next call probes
            await assert_normal_service(outage, "198.51.100.3")
            async with outage.client("198.51.100.1") as client:
                before = await _keyed(client, "/orders", "198.51.100.1/orders")
                assert before.headers["idempotent-replayed"] == "true"  # stored before the crash
                statuses = [(await client.post("/open")).status_code for _ in range(2)]
                assert statuses == [429, 429]  # its quota, spent before the crash, still counts
        finally:
            await store.aclose()
