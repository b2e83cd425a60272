"""The connections a `RedisStore` keeps to a single Redis server between calls.

The store sends its scripts on connections it took from its client's pool and keeps them idle
between calls, instead of going through ``client.evalsha`` for each. These tests pin what the
client's own path guaranteed: a connection the server closed while idle is replaced before
anything is sent on it, a socket found dead only by the send fails the call as a lost
connection (sent again only for operations safe to repeat), a cancelled call never leaves its
reply to the next call, and connections go back to the pool on ``aclose``. Each runs a private
``redis-server`` it may restart, freeze or kill.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bastion.exceptions import StoreUnavailable
from bastion.stores import RateLimitHit
from bastion.stores._redis import RedisStore
from tests.conftest import FakeClock
from tests.stores.redis_support import PrivateRedis, private_redis

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

LEASE = 30_000
HANG_GUARD = 3.0
"""Seconds after which a call counts as hung; it measures no performance."""


def tier(name: str, limit: int = 100) -> list[RateLimitHit]:
    return [RateLimitHit(f"{name}:203.0.113.7", "fixed_window", limit, 60_000)]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    with private_redis(tmp_path) as server:
        yield server


@asynccontextmanager
async def a_store(server: PrivateRedis, kind: str, clock: FakeClock) -> AsyncIterator[RedisStore]:
    """A store built from the URL, or on a client of the application's own (redis-py's
    default ``Retry``, which would send a failed command again)."""
    if kind == "url":
        store = RedisStore(url=server.url, clock=clock)
        try:
            yield store
        finally:
            await store.aclose()
        return
    client = Redis.from_url(server.url)
    store = RedisStore(client, clock=clock)
    try:
        yield store
    finally:
        await store.aclose()
        await client.aclose()


async def _loop_sees_the_close(server: PrivateRedis) -> None:
    """One round trip on a fresh connection: the event loop then has polled the sockets at
    least once since the server closed the store's connection, as happens between requests."""
    admin = Redis.from_url(server.url)
    try:
        await admin.ping()
    finally:
        await admin.aclose()


@pytest.mark.parametrize("kind", ["url", "client"])
async def test_a_connection_closed_while_idle_is_replaced_before_sending(
    server: PrivateRedis, kind: str, clock: FakeClock
) -> None:
    """Redis restarted between two calls (and the loop has seen the close): the next call,
    a rate-limit hit included, goes out on a new connection and is counted once."""
    async with a_store(server, kind, clock) as store:
        assert (await store.hit(tier("before")))[0].allowed  # a connection held, idle
        server.stop()
        server.start()  # same port, empty
        await _loop_sees_the_close(server)
        with anyio.fail_after(HANG_GUARD):
            decision = (await store.hit(tier("after")))[0]
        assert (decision.allowed, decision.remaining) == (True, 99)  # counted exactly once


async def test_a_connection_killed_by_the_server_is_replaced(
    server: PrivateRedis, clock: FakeClock
) -> None:
    """``CLIENT KILL`` (or the server's idle ``timeout``) closes the store's idle connection:
    the next call does not fail for it."""
    admin = Redis.from_url(server.url)
    store = RedisStore(url=server.url, clock=clock)
    try:
        await store.hit(tier("k"))
        killed = await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        assert killed >= 1
        with anyio.fail_after(HANG_GUARD):
            decision = (await store.hit(tier("k")))[0]
        assert decision.remaining == 98
        assert (await store.claim("c", "fp", "t", lease_ms=LEASE)).acquired
    finally:
        await store.aclose()
        await admin.aclose()


@pytest.mark.parametrize("kind", ["url", "client"])
async def test_a_socket_found_dead_by_the_send_fails_a_hit_and_is_retried_for_a_claim(
    server: PrivateRedis, kind: str, clock: FakeClock
) -> None:
    """Redis restarted while the loop did not run (no await between): the idle connection
    looks alive, so the send goes out on it and the reply never comes. A hit then fails and
    is never sent again, not even by the client's own ``Retry``; a claim, safe to repeat, is
    sent once more on a new connection and succeeds."""
    async with a_store(server, kind, clock) as store:
        await store.hit(tier("warm"))
        server.stop()
        server.start()
        with anyio.fail_after(HANG_GUARD), pytest.raises(StoreUnavailable):
            await store.hit(tier("lost"))
        decision = (await store.hit(tier("lost")))[0]
        assert decision.remaining == 99  # the failed hit never reached the new server

        server.stop()
        server.start()
        with anyio.fail_after(HANG_GUARD):
            assert (await store.claim("c", "fp", "t", lease_ms=LEASE)).acquired


async def test_a_cancelled_call_never_leaves_its_reply_to_the_next(
    server: PrivateRedis, clock: FakeClock
) -> None:
    """A hit cancelled while it waits for its reply (the server frozen) closes its
    connection: the next call reads its own reply, not the late one of the cancelled hit."""
    assert server.process is not None
    store = RedisStore(url=server.url, clock=clock)
    try:
        await store.hit(tier("cancelled"))
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            with anyio.fail_after(HANG_GUARD):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(store.hit, tier("cancelled"))
                    await anyio.wait_all_tasks_blocked()  # sent, waiting for the reply
                    tg.cancel_scope.cancel()
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        with anyio.fail_after(HANG_GUARD):
            decision = (await store.hit(tier("next", limit=10)))[0]
        assert (decision.limit, decision.remaining) == (10, 9)
        assert store.breaker.state == "closed"  # a cancellation is not a failure
    finally:
        await store.aclose()


async def test_a_socket_timeout_shorter_than_the_call_bounds_each_reply(
    server: PrivateRedis, clock: FakeClock
) -> None:
    """``socket_timeout`` below ``timeout`` still bounds the wait for one reply: a frozen
    server fails the call on the socket timeout, before the call's own bound."""
    assert server.process is not None
    store = RedisStore(url=server.url, clock=clock, timeout=2.0, socket_timeout=0.2)
    try:
        await store.ping()
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            with anyio.fail_after(HANG_GUARD), pytest.raises(StoreUnavailable) as info:
                await store.claim("k", "fp", "t", lease_ms=LEASE)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert "within 2.0 s" not in str(info.value)  # not the call's bound
        assert (await store.claim("k", "fp", "t", lease_ms=LEASE)).acquired
    finally:
        await store.aclose()


def _small_pool(server: PrivateRedis) -> Redis:
    pool = BlockingConnectionPool.from_url(
        server.url, max_connections=2, timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    return Redis.from_pool(pool)


async def test_the_store_leaves_its_client_a_connection(
    server: PrivateRedis, clock: FakeClock
) -> None:
    """After a burst, the store keeps at most all but one of its client's pooled
    connections, so commands sent through the client itself still get one."""
    client = _small_pool(server)
    store = RedisStore(client, clock=clock)

    async def claim(key: str) -> None:
        await store.claim(key, "fp", "t", lease_ms=LEASE)

    try:
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                for i in range(6):
                    tg.start_soon(claim, f"k{i}")
            assert await client.ping()
    finally:
        await store.aclose()
        await client.aclose()


async def test_stores_on_one_client_share_its_connections(
    server: PrivateRedis, clock: FakeClock
) -> None:
    """Two stores on one two-connection client take turns with bursts of two calls: neither
    keeps a connection the other needs."""
    client = _small_pool(server)
    stores = [RedisStore(client, clock=clock, prefix=name) for name in ("first", "second")]

    async def claim(store: RedisStore, key: str) -> None:
        assert (await store.claim(key, "fp", "t", lease_ms=LEASE)).acquired

    try:
        with anyio.fail_after(HANG_GUARD):
            for burst in range(4):
                store = stores[burst % 2]
                async with anyio.create_task_group() as tg:
                    for i in range(2):
                        tg.start_soon(claim, store, f"k{burst}-{i}")
            assert await client.ping()
    finally:
        for store in stores:
            await store.aclose()
        await client.aclose()


async def test_aclose_hands_every_connection_back_as_it_was(
    server: PrivateRedis, clock: FakeClock
) -> None:
    """``aclose`` gives the client's pool back the connections the store kept, with the
    socket timeout they had: both of a two-connection pool can be taken again."""
    client = _small_pool(server)
    store = RedisStore(client, clock=clock)
    taken: list[Any] = []
    try:
        await store.claim("k", "fp", "t", lease_ms=LEASE)
        await store.aclose()
        with anyio.fail_after(HANG_GUARD):
            taken = [await client.connection_pool.get_connection() for _ in range(2)]
        assert [conn.socket_timeout for conn in taken] == [0.5, 0.5]
    finally:
        for conn in taken:
            await client.connection_pool.release(conn)
        await client.aclose()
