"""What only the Redis store has: scripts, key layout, error mapping, round trips, outages.

The tests that stop, freeze or flush a server run their own private ``redis-server`` on a free
port, never the shared one other test runs use.
"""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import ResponseError

import bastion.stores
from bastion.exceptions import ConfigurationError, StoreError, StoreUnavailable
from bastion.stores import RateLimitHit
from bastion.stores._breaker import CircuitBreaker
from bastion.stores._redis import MAX_TIER_SPAN, RedisStore
from tests.conftest import FakeClock, service_url
from tests.stores.conftest import REDIS_STORES
from tests.stores.redis_support import (
    PrivateRedis,
    delete_prefix,
    fakeredis_store,
    free_port,
    private_redis,
    unique_prefix,
)

pytestmark = pytest.mark.anyio

LEASE = 30_000
TTL = 86_400_000
HANG_GUARD = 3.0
"""Seconds after which a store call counts as hung. The store's own timeouts are 0.25 s; this
bound only catches redis-py's multi-second default retries, it measures no performance."""

TIERS = [
    RateLimitHit("ip:203.0.113.7", "fixed_window", 100, 60_000),
    RateLimitHit("wallet:0xabc", "sliding_window", 60, 3_600_000),
    RateLimitHit("route:/api/claim", "gcra", 10, 1_000),
]


@pytest.fixture(params=REDIS_STORES)
async def store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[RedisStore]:
    """A fresh RedisStore on fakeredis, then on the real server."""
    async with request.param(clock) as store:
        yield store


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private redis-server this test may flush, freeze or kill."""
    with private_redis(tmp_path) as server:
        yield server


async def _round_trips(url: str, action: Callable[[], Awaitable[object]]) -> list[str]:
    """The commands clients sent while ``action`` ran, read from MONITOR.

    MONITOR marks the commands scripts run inside the server as ``lua``; everything else
    crossed the network, so the list is exactly the round trips ``action`` made.
    """
    watcher, marker = Redis.from_url(url), Redis.from_url(url)
    commands: list[str] = []
    try:
        await marker.ping()  # its connection handshake happens before MONITOR starts
        async with watcher.monitor() as monitor:
            await action()
            await marker.echo("bastion-test-end")
            while (seen := await monitor.next_command())["command"] != "ECHO bastion-test-end":
                if seen["client_type"] != "lua":
                    commands.append(seen["command"].split()[0])
    finally:
        await watcher.aclose()
        await marker.aclose()
    return commands


# -- key layout -----------------------------------------------------------------------------


def test_one_principals_buckets_share_a_slot_and_principals_spread() -> None:
    """Every tier of one principal hashes to one slot (one script); principals spread out."""
    store = RedisStore(Redis(), prefix="svc")
    for principal in ("addr:203.0.113.7", "key:{odd}braces}", "x"):
        tiers = ("burst", "daily", "route.a-1")
        slots = {key_slot(store.bucket_key(f"{tier}:{principal}").encode()) for tier in tiers}
        assert len(slots) == 1, principal
    spread = {key_slot(store.bucket_key(f"burst:addr:10.0.0.{i}").encode()) for i in range(50)}
    assert len(spread) > 40
    assert store.bucket_key("burst:addr:1").startswith("svc:rl:{")


def test_a_fixed_hash_tag_puts_every_bucket_in_one_slot() -> None:
    """With ``hash_tag`` set, tiers keyed by different principals still share one slot."""
    store = RedisStore(Redis(), prefix="svc", hash_tag="svc")
    slots = {key_slot(store.bucket_key(hit.key).encode()) for hit in TIERS}
    slots.add(key_slot(store.bucket_key("anything {with} braces").encode()))
    assert slots == {key_slot(b"svc")}


def test_hash_tag_is_configurable_and_keys_carry_the_prefix() -> None:
    """A custom hash tag moves the buckets to its slot; records keep plain prefixed keys."""
    store = RedisStore(Redis(), prefix="svc", hash_tag="limits-eu")
    assert store.bucket_key("k") == "svc:rl:{limits-eu}:k"
    assert key_slot(store.bucket_key("k").encode()) == key_slot(b"limits-eu")
    assert store.record_key("abc") == "svc:idem:abc"


@pytest.mark.parametrize("option", [{"prefix": "a{b"}, {"prefix": ""}, {"hash_tag": "x}"}])
def test_braces_in_prefix_or_tag_are_refused(option: dict[str, str]) -> None:
    """A brace in the prefix or tag would silently change which slot keys land on."""
    with pytest.raises(ConfigurationError):
        RedisStore(Redis(), **option)


# -- construction ---------------------------------------------------------------------------


def test_needs_exactly_one_of_client_and_url() -> None:
    """Neither or both of client and url is a configuration error."""
    with pytest.raises(ConfigurationError):
        RedisStore()
    with pytest.raises(ConfigurationError):
        RedisStore(Redis(), url="redis://localhost")


@pytest.mark.parametrize(
    "option",
    [
        {"socket_timeout": 0},
        {"retries": -1},
        {"max_connections": 0},
        {"expiry_slack_ms": -1},
    ],
)
def test_impossible_client_options_are_refused(option: dict[str, int]) -> None:
    """Timeouts, retries, pool size and slack are checked when the store is built."""
    with pytest.raises(ConfigurationError):
        RedisStore(url="redis://localhost", **option)


async def test_a_client_passed_in_is_left_open(clock: FakeClock) -> None:
    """The store closes only the clients it built; yours stays usable after aclose()."""
    import fakeredis

    client = fakeredis.FakeAsyncRedis()
    store = RedisStore(client, clock=clock)
    await store.aclose()
    assert await client.ping()
    await client.aclose()


def test_client_decoding_responses_is_refused() -> None:
    """A client that decodes replies to str would corrupt stored binary responses."""
    with pytest.raises(ConfigurationError, match="decode_responses"):
        RedisStore(Redis(decode_responses=True))


async def test_from_url_reads_bastion_options_from_the_query() -> None:
    """``?prefix=`` and ``?hash_tag=`` configure the store; redis-py gets the rest."""
    store = bastion.stores.from_url(
        "redis://127.0.0.1:6399/3?prefix=shop&hash_tag=rl&socket_timeout=0.5"
    )
    try:
        assert isinstance(store, RedisStore)
        assert (store.prefix, store.hash_tag) == ("shop", "rl")
        kwargs = store.client.connection_pool.connection_kwargs
        assert (kwargs["db"], kwargs["socket_timeout"], kwargs["decode_responses"]) == (
            3,
            0.5,
            False,
        )
        assert store.client.connection_pool.connection_kwargs["retry"].get_retries() == 0
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    "hit",
    [
        RateLimitHit("k", "fixed_window", 0, 1_000),
        RateLimitHit("k", "gcra", 1, 0),
        RateLimitHit("k", "gcra", 1, 10, cost=-1),
        RateLimitHit("k", "leaky", 1, 10),  # type: ignore[arg-type]
        RateLimitHit("k", "sliding_window", 2**20, 2**30),
    ],
)
async def test_tiers_the_lua_port_cannot_decide_exactly_are_refused(
    store: RedisStore, hit: RateLimitHit
) -> None:
    """Out-of-range tiers raise ConfigurationError, never a silently wrong decision."""
    with pytest.raises(ConfigurationError):
        await store.hit([hit])


async def test_largest_allowed_tier_is_exact(store: RedisStore) -> None:
    """A tier right at MAX_TIER_SPAN still counts to the unit."""
    window = MAX_TIER_SPAN // (2**20 + 1)
    hit = RateLimitHit("big", "gcra", 2**20, window, cost=1)
    first = (await store.hit([hit]))[0]
    assert (first.allowed, first.remaining) == (True, 2**20 - 1)


# -- data -----------------------------------------------------------------------------------


async def test_responses_are_binary_safe(store: RedisStore) -> None:
    """Any bytes (NUL, invalid UTF-8, a megabyte) come back exactly as stored."""
    payload = b"\x00\xff\xfe" + bytes(range(256)) * 4096 + b"\x80"
    await store.claim("bin", "fp-\u00e9\u2713", "t1", lease_ms=LEASE)
    assert await store.complete("bin", "t1", payload, ttl_ms=TTL)
    claim = await store.claim("bin", "fp-\u00e9\u2713", "t2", lease_ms=LEASE)
    assert (claim.response, claim.fingerprint) == (payload, "fp-\u00e9\u2713")


async def test_empty_hit_list_needs_no_round_trip(store: RedisStore) -> None:
    """No tiers, no decisions."""
    assert await store.hit([]) == []


async def test_redis_errors_become_store_errors(store: RedisStore) -> None:
    """A server-side error (here WRONGTYPE) is a StoreError with the redis error chained."""
    await store.client.rpush(store.record_key("typed"), b"x")
    with pytest.raises(StoreError) as info:
        await store.claim("typed", "fp", "t", lease_ms=LEASE)
    assert not isinstance(info.value, StoreUnavailable)
    assert info.value.__cause__ is not None


async def test_unreachable_server_is_store_unavailable(clock: FakeClock) -> None:
    """Nothing listening: every primitive and ping raise StoreUnavailable at once."""
    store = RedisStore(url=f"redis://127.0.0.1:{free_port()}/0", clock=clock)
    try:
        with anyio.fail_after(HANG_GUARD):
            for call in _all_primitives(store):
                with pytest.raises(StoreUnavailable):
                    await call()
    finally:
        await store.aclose()


async def test_unreachable_cluster_is_store_unavailable(clock: FakeClock) -> None:
    """A cluster whose topology cannot be read fails every call as StoreUnavailable (not
    redis-py's own exception), which the breaker counts."""
    url = f"redis+cluster://127.0.0.1:{free_port()}"
    store = RedisStore(url=url, clock=clock, breaker=CircuitBreaker(failures=6))
    try:
        with anyio.fail_after(HANG_GUARD):
            for call in _all_primitives(store):  # six: the sixth failure opens the breaker
                with pytest.raises(StoreUnavailable, match="topology"):
                    await call()
        assert store.breaker.state == "open"
    finally:
        await store.aclose()


def _all_primitives(store: RedisStore) -> list[Any]:
    return [
        store.ping,
        lambda: store.claim("k", "fp", "t", lease_ms=LEASE),
        lambda: store.renew("k", "t", lease_ms=LEASE),
        lambda: store.complete("k", "t", b"r", ttl_ms=TTL),
        lambda: store.release("k", "t"),
        lambda: store.hit(TIERS),
    ]


# -- scripts and round trips on a private server --------------------------------------------


@pytest.mark.redis
async def test_each_primitive_is_one_round_trip(server: PrivateRedis, clock: FakeClock) -> None:
    """MONITOR: every primitive, a three-tier decision included, is exactly one EVALSHA."""
    store = RedisStore(url=server.url, clock=clock)

    async def every_outcome() -> None:
        await store.claim("a", "fp", "t1", lease_ms=LEASE)  # acquired
        await store.claim("a", "fp", "t2", lease_ms=LEASE)  # in flight
        await store.renew("a", "t1", lease_ms=LEASE)
        await store.complete("a", "t1", b"resp", ttl_ms=TTL)
        await store.claim("a", "fp", "t3", lease_ms=LEASE)  # replay
        await store.claim("b", "fp", "t4", lease_ms=LEASE)
        await store.release("b", "t4")
        await store.hit(TIERS)

    try:
        for call in _all_primitives(store):  # connect and cache every script first
            await call()
        assert await _round_trips(server.url, every_outcome) == ["EVALSHA"] * 8
    finally:
        await store.aclose()


@pytest.mark.redis
async def test_script_flush_costs_one_extra_round_trip(
    server: PrivateRedis, clock: FakeClock
) -> None:
    """After SCRIPT FLUSH a script's next call falls back to EVAL once, then EVALSHA again."""
    store = RedisStore(url=server.url, clock=clock)
    try:
        await store.claim("a", "fp", "t1", lease_ms=LEASE)
        await store.client.script_flush()

        async def claim_twice() -> None:
            await store.claim("a", "fp", "t2", lease_ms=LEASE)
            await store.claim("a", "fp", "t3", lease_ms=LEASE)

        assert await _round_trips(server.url, claim_twice) == ["EVALSHA", "EVAL", "EVALSHA"]
    finally:
        await store.aclose()


@pytest.fixture(params=["fakeredis", pytest.param("private", marks=pytest.mark.redis)])
async def flushable(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[RedisStore]:
    """A store on a server whose script cache this test may flush (never the shared one)."""
    if request.param == "fakeredis":
        async with fakeredis_store(clock) as store:
            yield store
        return
    with private_redis(tmp_path) as server:
        store = RedisStore(url=server.url, clock=clock)
        try:
            yield store
        finally:
            await store.aclose()


async def test_script_flush_is_survived_by_every_primitive(flushable: RedisStore) -> None:
    """NOSCRIPT never reaches the caller: each script is sent again after SCRIPT FLUSH."""
    store = flushable
    for call in _all_primitives(store):  # every script cached
        await call()
    steps = [
        lambda: store.claim("f", "fp", "t", lease_ms=LEASE),
        lambda: store.claim("f", "fp", "t2", lease_ms=LEASE),
        lambda: store.renew("f", "t", lease_ms=LEASE),
        lambda: store.complete("f", "t", b"done", ttl_ms=TTL),
        lambda: store.release("f", "t"),
        lambda: store.hit(TIERS),
    ]
    results = []
    for step in steps:
        await store.client.script_flush()
        results.append(await step())
    assert [r.acquired for r in results[:2]] == [True, False]
    assert results[2:5] == [True, True, False]
    assert [d.allowed for d in results[5]] == [True, True, True]


# -- outages --------------------------------------------------------------------------------


async def _all_fail_fast(store: RedisStore, concurrent: int = 20) -> None:
    """Every primitive, and a burst of concurrent claims, raise StoreUnavailable promptly."""
    errors: list[BaseException] = []

    async def claim(i: int) -> None:
        try:
            await store.claim(f"burst{i}", "fp", "t", lease_ms=LEASE)
        except StoreError as exc:
            errors.append(exc)

    with anyio.fail_after(HANG_GUARD):
        for call in _all_primitives(store):
            with pytest.raises(StoreUnavailable):
                await call()
        async with anyio.create_task_group() as tg:
            for i in range(concurrent):
                tg.start_soon(claim, i)
    assert len(errors) == concurrent
    assert all(isinstance(e, StoreUnavailable) for e in errors)


@pytest.mark.redis
async def test_killed_server_fails_fast_and_service_resumes_on_restart(
    server: PrivateRedis, clock: FakeClock
) -> None:
    """Server killed: errors at once; restarted on its port: the same store works again
    once its breaker's cool-down has passed."""
    breaker_clock = FakeClock()
    store = RedisStore(url=server.url, clock=clock, breaker=CircuitBreaker(clock=breaker_clock))
    try:
        assert (await store.claim("k", "fp", "t1", lease_ms=LEASE)).acquired
        assert (await store.hit(TIERS))[0].allowed
        server.stop()
        await _all_fail_fast(store)
        assert store.breaker.state == "open"
        server.start()  # same port, empty (no persistence) and with no scripts cached
        breaker_clock.advance(store.breaker.reset_after)
        for call in _all_primitives(store):
            await call()
        assert (await store.claim("after", "fp", "t", lease_ms=LEASE)).acquired
    finally:
        await store.aclose()


@pytest.mark.redis
async def test_frozen_server_times_out_and_service_resumes(
    server: PrivateRedis, clock: FakeClock
) -> None:
    """A server that accepts but never answers costs a socket timeout, not a hang."""
    assert server.process is not None
    breaker_clock = FakeClock()
    breaker = CircuitBreaker(clock=breaker_clock)
    store = RedisStore(url=server.url, clock=clock, timeout=0.2, breaker=breaker)
    try:
        await store.ping()
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            await _all_fail_fast(store, concurrent=10)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        breaker_clock.advance(breaker.reset_after)
        for call in _all_primitives(store):
            await call()
        assert (await store.claim("after", "fp", "t", lease_ms=LEASE)).acquired
    finally:
        await store.aclose()


# -- Redis Cluster ----------------------------------------------------------------------------


async def _wait_for_cluster(admin: Redis) -> None:
    for _ in range(200):  # polling another process: there is no event to wait on
        if b"cluster_state:ok" in await admin.execute_command("CLUSTER", "INFO"):
            return
        await anyio.sleep(0.05)
    pytest.fail("the private cluster never reported cluster_state:ok")


@pytest.mark.redis
async def test_every_primitive_runs_on_redis_cluster(tmp_path: Path, clock: FakeClock) -> None:
    """On a (one-node) cluster, which refuses cross-slot scripts, every primitive works."""
    extra = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
    with private_redis(tmp_path, *extra) as server:
        admin = Redis.from_url(server.url)
        url = f"redis+cluster://127.0.0.1:{server.port}"
        store = RedisStore.from_url(url, clock=clock, max_connections=8, hash_tag="rl")
        spread = RedisStore.from_url(url, clock=clock, prefix="spread")
        try:
            await admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            await _wait_for_cluster(admin)
            with pytest.raises(ResponseError, match="same slot"):
                await admin.eval("return 1", 2, "ip:1", "wallet:2")
            for call in _all_primitives(store):
                await call()
            decisions = await store.hit(TIERS)
            assert [d.remaining for d in decisions] == [98, 58, 8]
            # spread by principal: one principal's tiers are one script ...
            same = [RateLimitHit(f"{tier}:addr:1", "fixed_window", 5, 60_000) for tier in "abc"]
            assert [d.remaining for d in await spread.hit(same)] == [4, 4, 4]
            # ... and tiers of different principals in one request need the fixed tag
            with pytest.raises(StoreError, match="hash_tag") as info:
                await spread.hit(TIERS)
            assert not isinstance(info.value, StoreUnavailable)
        finally:
            await store.aclose()
            await spread.aclose()
            await admin.aclose()


# -- packaging ------------------------------------------------------------------------------


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )


def test_import_bastion_does_not_import_redis() -> None:
    """The redis extra stays optional: importing bastion and its stores never loads it."""
    done = _python("import sys, bastion, bastion.stores; print('redis' in sys.modules)")
    assert done.stdout.strip() == "False", done.stderr


def test_missing_redis_extra_names_the_extra() -> None:
    """Without redis-py, using RedisStore raises ConfigurationError naming bastion[redis]."""
    done = _python(
        "import sys; sys.modules['redis'] = None\n"
        "from bastion.exceptions import ConfigurationError\n"
        "try:\n    from bastion.stores import RedisStore\n"
        "except ConfigurationError as exc:\n    print(exc)"
    )
    assert "bastion[redis]" in done.stdout, done.stderr


# -- the example ----------------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_example_replays_across_its_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/redis_store_app.py runs a payment once and replays it from Redis."""
    url = service_url("BASTION_TEST_REDIS_URL")
    prefix = unique_prefix()
    monkeypatch.setenv("REDIS_URL", f"{url}?prefix={prefix}")  # URL options win over kwargs
    example = runpy.run_path(str(Path(__file__).parents[2] / "examples" / "redis_store_app.py"))
    transport = httpx.ASGITransport(app=example["app"])
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/readyz")).json() == {"redis": "up"}
            headers = {"Idempotency-Key": "pay-1"}
            first = await client.post("/payments", json={"amount": 5}, headers=headers)
            again = await client.post("/payments", json={"amount": 5}, headers=headers)
            keyless = await client.post("/payments", json={"amount": 5})
        assert first.status_code == again.status_code == 201
        assert again.content == first.content
        assert again.headers["idempotent-replayed"] == "true"
        assert keyless.status_code == 400
        assert example["STORE"].prefix == prefix
    finally:
        await example["STORE"].aclose()
        await delete_prefix(url, prefix)


async def test_claim_and_complete_sent_twice_by_one_token_succeed_twice(
    store: RedisStore,
) -> None:
    """A claim or complete repeated after a broken connection is recognised as its own."""
    assert (await store.claim("again", "fp", "t1", lease_ms=LEASE)).acquired
    assert (await store.claim("again", "fp", "t1", lease_ms=LEASE)).acquired
    assert not (await store.claim("again", "fp", "t2", lease_ms=LEASE)).acquired
    assert await store.complete("again", "t1", b"resp", ttl_ms=TTL)
    assert await store.complete("again", "t1", b"resp", ttl_ms=TTL)
    assert not await store.complete("again", "t1", b"other", ttl_ms=TTL)
