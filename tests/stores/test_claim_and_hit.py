"""`ClaimHitStore.claim_and_hit`: a fresh keyed request's claim and its rate-limit charge in one
atomic step, held to the two calls it replaces on every backend that offers it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio.cluster import RedisCluster

from bastion.exceptions import ConfigurationError, StoreError
from bastion.stores import ClaimHitStore, RateLimitHit, RedisStore
from tests.conftest import FakeClock
from tests.stores.conftest import STORES
from tests.stores.redis_support import PrivateRedis, private_redis
from tests.stores.test_redis import _round_trips

pytestmark = pytest.mark.anyio

LEASE = 30_000
TTL = 86_400_000
JOINT_STORES = [p for p in STORES if p.id in {"fakeredis", "redis", "postgres"}]


@pytest.fixture(params=JOINT_STORES)
async def joint(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Any]:
    async with request.param(clock) as store:
        yield store


def tiers(owner: str, limit: int = 2) -> list[RateLimitHit]:
    """Two tiers of one client, as a request charges them."""
    return [
        RateLimitHit(f"burst:{owner}", "fixed_window", limit, 60_000),
        RateLimitHit(f"daily:{owner}", "sliding_window", limit + 5, 86_400_000),
    ]


async def test_the_backends_say_whether_they_claim_with_hits(store: Any) -> None:
    """A single Redis server makes the step one script, PostgreSQL one statement, and they
    say so. SQLite and MySQL do not, nor does the memory store, which has no round trip to
    save (its two calls cost fewer instructions than one joint call); the middleware then
    make the two calls."""
    offers = getattr(store, "claims_with_hits", False)
    postgres = store.backend == "sql" and store.engine.dialect.name == "postgresql"
    assert offers is (store.backend == "redis" or postgres)
    if offers:
        assert isinstance(store, ClaimHitStore)
    elif hasattr(store, "claim_and_hit"):
        with pytest.raises(ConfigurationError):
            await store.claim_and_hit("k", "fp", "t", tiers("n"), lease_ms=LEASE)


async def test_a_fresh_claim_is_charged_as_the_two_calls_would(joint: Any) -> None:
    """Claimed keys charge their hits, decision for decision as `claim` then `hit` on a twin
    client; the third request of a limit of two is denied, and its claim stays taken."""
    joined, apart = [], []
    for i in range(3):
        claim, decisions = await joint.claim_and_hit(
            f"a{i}", "fp", f"t{i}", tiers("one"), lease_ms=LEASE
        )
        assert claim.acquired is True
        joined.append(decisions)
        assert (await joint.claim(f"b{i}", "fp", f"u{i}", lease_ms=LEASE)).acquired
        apart.append(await joint.hit(tiers("two")))
    assert joined == apart
    assert [[d.allowed for d in row] for row in joined] == [[True, True]] * 2 + [[False, True]]
    # the denied request charged nothing (two before it, this hit the third), and its key
    # is held until the caller releases it
    assert [d.remaining for d in await joint.hit(tiers("one", limit=3))] == [0, 5]
    assert (await joint.claim("a2", "fp", "x", lease_ms=LEASE)).acquired is False
    assert await joint.release("a2", "t2") is True


async def test_no_hits_is_a_plain_claim(joint: Any) -> None:
    """With nothing to charge the call is a claim, and answers no decisions."""
    claim, decisions = await joint.claim_and_hit("alone", "fp", "t", [], lease_ms=LEASE)
    assert claim.acquired is True
    assert decisions == []


async def test_a_key_already_claimed_or_stored_charges_nothing(joint: Any) -> None:
    """In flight, stored or reused with another body: the claim says so and no bucket moves."""
    await joint.claim("flying", "fp", "t1", lease_ms=LEASE)
    await joint.claim("done", "fp", "t2", lease_ms=LEASE)
    await joint.complete("done", "t2", b"stored", ttl_ms=TTL)
    for key, fingerprint in (("flying", "fp"), ("done", "fp"), ("done", "other")):
        claim, decisions = await joint.claim_and_hit(
            key, fingerprint, "t3", tiers("c", limit=1), lease_ms=LEASE
        )
        assert claim.acquired is False
        assert claim.fingerprint == "fp"
        assert decisions == []
    replay, _ = await joint.claim_and_hit("done", "fp", "t4", tiers("c"), lease_ms=LEASE)
    assert replay.response == b"stored"
    assert [d.remaining for d in await joint.hit(tiers("c", limit=1))] == [0, 5]


async def test_a_key_whose_lease_ran_out_is_taken_and_charged(joint: Any, clock: FakeClock) -> None:
    """A record whose holder died (its lease ran out) is taken over, and the hits charged."""
    await joint.claim("lapsed", "fp", "dead", lease_ms=1_000)
    clock.advance(2)
    claim, decisions = await joint.claim_and_hit(
        "lapsed", "fp2", "alive", tiers("d"), lease_ms=LEASE
    )
    assert claim.acquired is True
    assert [d.remaining for d in decisions] == [1, 6]
    assert await joint.complete("lapsed", "alive", b"ok", ttl_ms=TTL) is True


async def test_concurrent_fresh_claims_admit_exactly_the_limit(joint: Any) -> None:
    """Twenty fresh keys of one client at once against a limit of 5: five are admitted."""
    admitted: list[bool] = []

    async def one(i: int) -> None:
        claim, decisions = await joint.claim_and_hit(
            f"k{i}", "fp", f"t{i}", tiers("crowd", limit=5), lease_ms=LEASE
        )
        assert claim.acquired
        admitted.append(all(d.allowed for d in decisions))

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, i)
    assert admitted.count(True) == 5


# -- Redis: one script, one round trip; never on a cluster ----------------------------------


@pytest.fixture(params=[p for p in JOINT_STORES if p.id != "postgres"])
async def redis_joint(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Any]:
    async with request.param(clock) as store:
        yield store


async def test_a_decision_that_fails_leaves_no_claim_behind(redis_joint: Any) -> None:
    """A bucket key holding another type fails the script after its claim wrote the record:
    the script undoes the claim, so the key is free for the retry, and the call fails."""
    hits = tiers("broken")
    await redis_joint.client.hset(redis_joint.bucket_key(hits[0].key), "x", "1")
    with pytest.raises(StoreError, match="WRONGTYPE"):
        await redis_joint.claim_and_hit("k", "fp", "t1", hits, lease_ms=LEASE)
    assert (await redis_joint.claim("k", "fp", "t2", lease_ms=LEASE)).acquired is True


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    with private_redis(tmp_path) as server:
        yield server


@pytest.mark.redis
async def test_claim_and_hit_is_one_round_trip_and_survives_a_script_flush(
    server: PrivateRedis, clock: FakeClock
) -> None:
    """MONITOR: one EVALSHA however the claim goes; after SCRIPT FLUSH, one EVAL more once."""
    store = RedisStore(url=server.url, clock=clock)
    try:
        await store.claim_and_hit("warm", "fp", "t0", tiers("w"), lease_ms=LEASE)

        async def every_outcome() -> None:
            await store.claim_and_hit("a", "fp", "t1", tiers("x"), lease_ms=LEASE)  # taken
            await store.claim_and_hit("a", "fp", "t2", tiers("x"), lease_ms=LEASE)  # in flight

        assert await _round_trips(server.url, every_outcome) == ["EVALSHA"] * 2
        await store.client.script_flush()

        async def after_flush() -> None:
            await store.claim_and_hit("b", "fp", "t3", tiers("y"), lease_ms=LEASE)
            await store.claim_and_hit("c", "fp", "t4", tiers("y"), lease_ms=LEASE)

        assert await _round_trips(server.url, after_flush) == ["EVALSHA", "EVAL", "EVALSHA"]
    finally:
        await store.aclose()


@pytest.mark.redis
async def test_a_broken_connection_falls_back_to_the_two_calls(
    server: PrivateRedis, clock: FakeClock
) -> None:
    """Redis restarted while the loop did not run: the joint script's send goes out on a dead
    socket. The call is not lost to a 503: the claim (safe to repeat) and the hits are sent
    again, as the two calls, and the key is taken."""
    store = RedisStore(url=server.url, clock=clock)
    try:
        await store.claim_and_hit("warm", "fp", "t0", tiers("w"), lease_ms=LEASE)
        server.stop()
        server.start()
        with anyio.fail_after(30):
            claim, decisions = await store.claim_and_hit(
                "k", "fp", "t1", tiers("x"), lease_ms=LEASE
            )
        assert claim.acquired is True
        assert [d.remaining for d in decisions] == [1, 6]
    finally:
        await store.aclose()


async def test_a_cluster_store_does_not_claim_with_hits() -> None:
    """A record and its request's buckets hash to different slots: the store says it cannot,
    and refuses the call rather than send a cross-slot script."""
    store = RedisStore(RedisCluster(host="127.0.0.1", port=1))
    assert store.claims_with_hits is False
    with pytest.raises(ConfigurationError, match="cluster"):
        await store.claim_and_hit("k", "fp", "t", tiers("z"), lease_ms=LEASE)
