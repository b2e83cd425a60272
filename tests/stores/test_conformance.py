"""The store contract, run unchanged against every backend in ``conftest.STORES``."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from bastion.stores import (
    Claim,
    ConcurrencyStore,
    IdempotencyStore,
    RateLimitHit,
    RateLimitStore,
    SlotDecision,
    SlotRequest,
)
from tests.conftest import FakeClock

pytestmark = pytest.mark.anyio

LEASE = 30_000
TTL = 86_400_000
FLOOD = 100
"""New keys in a flood: more than the small memory store of the table holds."""


async def test_implements_both_protocols(store: Any) -> None:
    """Every backend is both an idempotency store and a rate-limit store."""
    assert isinstance(store, IdempotencyStore)
    assert isinstance(store, RateLimitStore)
    assert isinstance(store.backend, str)
    await store.ping()


async def test_first_claim_acquires(store: Any) -> None:
    """A free key is taken by the first claim."""
    claim = await store.claim("k1", "fp", "t1", lease_ms=LEASE)
    assert claim == Claim(acquired=True, fingerprint="fp")


async def test_second_claim_sees_in_flight_record(store: Any) -> None:
    """A claim on a held key returns the holder's fingerprint and remaining lease."""
    await store.claim("k1", "fp-a", "t1", lease_ms=LEASE)
    claim = await store.claim("k1", "fp-b", "t2", lease_ms=LEASE)
    assert not claim.acquired
    assert claim.fingerprint == "fp-a"
    assert claim.response is None
    assert 0 < claim.lease_remaining_ms <= LEASE


async def test_complete_then_claim_returns_response(store: Any) -> None:
    """After completion every claim returns the stored bytes and fingerprint unchanged."""
    payload = bytes(range(256)) * 3 + b"\x00\n\r"
    await store.claim("k1", "fp", "t1", lease_ms=LEASE)
    assert await store.complete("k1", "t1", payload, ttl_ms=TTL) is True
    claim = await store.claim("k1", "fp", "t2", lease_ms=LEASE)
    assert claim.acquired is False
    assert claim.fingerprint == "fp"
    assert claim.response == payload


async def test_complete_with_stale_token_is_refused(store: Any) -> None:
    """Only the current lease holder may write the response (fencing)."""
    await store.claim("k1", "fp", "t1", lease_ms=LEASE)
    assert await store.complete("k1", "other", b"x", ttl_ms=TTL) is False
    assert (await store.claim("k1", "fp", "t3", lease_ms=LEASE)).response is None


async def test_expired_lease_is_taken_over_and_fences_old_holder(
    store: Any, clock: FakeClock
) -> None:
    """A crashed holder's lease expires; the new holder's token wins, the old one is refused."""
    await store.claim("k1", "fp", "old", lease_ms=1_000)
    clock.advance(1.5)
    assert (await store.claim("k1", "fp", "new", lease_ms=LEASE)).acquired
    assert await store.complete("k1", "old", b"stale", ttl_ms=TTL) is False
    assert await store.renew("k1", "old", lease_ms=LEASE) is False
    assert await store.release("k1", "old") is False
    assert await store.complete("k1", "new", b"fresh", ttl_ms=TTL) is True
    assert (await store.claim("k1", "fp", "x", lease_ms=LEASE)).response == b"fresh"


async def test_renew_extends_lease(store: Any, clock: FakeClock) -> None:
    """A renewed lease outlives its first deadline."""
    await store.claim("k1", "fp", "t1", lease_ms=1_000)
    clock.advance(0.8)
    assert await store.renew("k1", "t1", lease_ms=1_000) is True
    clock.advance(0.8)
    assert not (await store.claim("k1", "fp", "t2", lease_ms=LEASE)).acquired


async def test_release_frees_key(store: Any) -> None:
    """A released key can be claimed again at once."""
    await store.claim("k1", "fp", "t1", lease_ms=LEASE)
    assert await store.release("k1", "t1") is True
    assert (await store.claim("k1", "fp2", "t2", lease_ms=LEASE)).acquired


async def test_completed_record_cannot_be_released_or_renewed(store: Any) -> None:
    """Once stored, a response stays until it expires."""
    await store.claim("k1", "fp", "t1", lease_ms=LEASE)
    await store.complete("k1", "t1", b"done", ttl_ms=TTL)
    assert await store.release("k1", "t1") is False
    assert await store.renew("k1", "t1", lease_ms=LEASE) is False
    assert await store.complete("k1", "t1", b"again", ttl_ms=TTL) is False
    assert (await store.claim("k1", "fp", "t2", lease_ms=LEASE)).response == b"done"


async def test_completed_record_expires(store: Any, clock: FakeClock) -> None:
    """A stored response is forgotten after its TTL and the key is free again."""
    await store.claim("k1", "fp", "t1", lease_ms=LEASE)
    await store.complete("k1", "t1", b"done", ttl_ms=2_000)
    clock.advance(1.0)
    assert (await store.claim("k1", "fp", "t2", lease_ms=LEASE)).response == b"done"
    clock.advance(1.5)
    assert (await store.claim("k1", "fp", "t3", lease_ms=LEASE)).acquired


async def test_keys_are_independent(store: Any) -> None:
    """Records of different keys never affect each other."""
    await store.claim("a", "fp", "t1", lease_ms=LEASE)
    assert (await store.claim("b", "fp", "t2", lease_ms=LEASE)).acquired


async def test_concurrent_claims_have_one_winner(store: Any) -> None:
    """Of many simultaneous claims on one key exactly one acquires it."""
    results: list[bool] = []

    async def one(i: int) -> None:
        results.append((await store.claim("hot", "fp", f"t{i}", lease_ms=LEASE)).acquired)

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(one, i)
    assert results.count(True) == 1


# -- eviction pressure and a clock that steps back -------------------------------------------
# A store may evict under pressure (the memory store is bounded), but never a live lease or an
# unexpired stored response while something else could go; stores that never evict pass too.


async def _survived(store: Any) -> None:
    """The lease "held" (token t-held) is intact and "done" still replays."""
    claim = await store.claim("held", "fp", "t-other", lease_ms=LEASE)
    assert not claim.acquired
    assert claim.response is None
    assert (await store.claim("done", "fp", "t-other", lease_ms=LEASE)).response == b"done"
    assert await store.renew("held", "t-held", lease_ms=LEASE) is True
    assert await store.complete("held", "t-held", b"ran once", ttl_ms=TTL) is True
    assert (await store.claim("held", "fp", "t-late", lease_ms=LEASE)).response == b"ran once"


async def test_live_records_survive_a_flood_of_new_keys(store: Any, clock: FakeClock) -> None:
    """A flood of new keys (stored, in flight, abandoned) costs no live lease and no unexpired
    stored response."""
    await store.claim("held", "fp", "t-held", lease_ms=LEASE)
    await store.claim("done", "fp", "t-done", lease_ms=LEASE)
    await store.complete("done", "t-done", b"done", ttl_ms=TTL)
    for i in range(FLOOD):
        assert (await store.claim(f"flood{i}", "fp", "t", lease_ms=1_000)).acquired
        if i % 2:
            assert await store.complete(f"flood{i}", "t", b"x", ttl_ms=1_000)
        if i % 10 == 9:
            clock.advance(1.5)  # the flood so far expires, abandoned leases included
    await _survived(store)


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "gcra"])
async def test_exhausted_bucket_survives_a_flood_of_new_keys(store: Any, algorithm: str) -> None:
    """Another client's flood of new keys never hands an exhausted bucket its quota back."""
    for _ in range(3):
        await store.hit([_hit("spent", algorithm)])
    for i in range(FLOOD):
        assert (await store.hit([_hit(f"flood{i}", algorithm)]))[0].allowed
    assert not (await store.hit([_hit("spent", algorithm)]))[0].allowed


async def test_clock_stepping_back_expires_nothing_early(store: Any, clock: FakeClock) -> None:
    """After the clock steps back 30 s, under a flood of new keys, a held lease stays held and
    its token still renews and completes it, stored responses replay, no second claim gets the
    key, and nothing expires before its time on the clock."""
    await store.claim("held", "fp", "t-held", lease_ms=LEASE)
    await store.claim("done", "fp", "t-done", lease_ms=LEASE)
    await store.complete("done", "t-done", b"done", ttl_ms=2_000)
    clock.step_back(30)
    for i in range(FLOOD):
        assert (await store.claim(f"flood{i}", "fp", "t", lease_ms=1_000)).acquired
        assert await store.complete(f"flood{i}", "t", b"x", ttl_ms=1_000)
    await _survived(store)
    clock.advance(30 + 1.5)
    assert (await store.claim("done", "fp", "t-other", lease_ms=LEASE)).response == b"done"
    assert (await store.claim("held", "fp", "t-other", lease_ms=LEASE)).response == b"ran once"


async def test_renewal_from_a_clock_behind_never_shortens_a_lease(
    store: Any, clock: FakeClock
) -> None:
    """A renewal made while the clock is 30 s behind (another worker's clock, or a step back)
    keeps the deadline the lease already had, so no second claim gets the key early."""
    await store.claim("k", "fp", "t1", lease_ms=LEASE)
    clock.step_back(30)
    assert await store.renew("k", "t1", lease_ms=LEASE)
    clock.advance(30 + LEASE / 1000 - 0.5)
    taken = await store.claim("k", "fp", "t2", lease_ms=LEASE)
    assert not taken.acquired
    assert taken.lease_remaining_ms > 0


# -- rate limits ----------------------------------------------------------------------------


def _hit(
    key: str, algorithm: str = "fixed_window", limit: int = 3, window_ms: int = 60_000
) -> RateLimitHit:
    return RateLimitHit(key=key, algorithm=algorithm, limit=limit, window_ms=window_ms)  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "gcra"])
async def test_limit_is_enforced(store: Any, algorithm: str) -> None:
    """Exactly ``limit`` hits pass in a burst; the next is denied with a retry time."""
    decisions = [(await store.hit([_hit("b", algorithm)]))[0] for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    assert decisions[3].retry_after_ms > 0
    assert decisions[3].limit == 3


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "gcra"])
async def test_quota_returns_after_retry_after(
    store: Any, clock: FakeClock, algorithm: str
) -> None:
    """Waiting the advertised retry time is enough for the next hit to pass."""
    for _ in range(3):
        await store.hit([_hit("b", algorithm)])
    denied = (await store.hit([_hit("b", algorithm)]))[0]
    clock.advance(denied.retry_after_ms / 1000)
    assert (await store.hit([_hit("b", algorithm)]))[0].allowed


async def test_denied_request_charges_no_tier(store: Any) -> None:
    """All-or-nothing: when one tier denies, the tiers that allowed are not charged."""
    roomy, tight = _hit("roomy", limit=10), _hit("tight", limit=1)
    assert [d.allowed for d in await store.hit([roomy, tight])] == [True, True]
    decisions = await store.hit([roomy, tight])
    assert [d.allowed for d in decisions] == [True, False]
    assert (await store.hit([roomy]))[0].remaining == 8


async def test_buckets_are_independent(store: Any) -> None:
    """A full bucket leaves other keys untouched."""
    for _ in range(3):
        await store.hit([_hit("x")])
    assert (await store.hit([_hit("y")]))[0].allowed


async def test_fixed_window_resets_at_window_boundary(store: Any, clock: FakeClock) -> None:
    """A fixed window starts afresh when the next aligned window begins."""
    for _ in range(3):
        await store.hit([_hit("w", window_ms=10_000)])
    denied = (await store.hit([_hit("w", window_ms=10_000)]))[0]
    assert not denied.allowed
    assert denied.retry_after_ms == denied.reset_ms
    clock.advance(denied.reset_ms / 1000)
    assert (await store.hit([_hit("w", window_ms=10_000)]))[0].remaining == 2


async def test_concurrent_hits_never_exceed_limit(store: Any) -> None:
    """200 simultaneous hits on a limit of 50 let exactly 50 through."""
    allowed: list[bool] = []

    async def one() -> None:
        allowed.append((await store.hit([_hit("c", limit=50)]))[0].allowed)

    async with anyio.create_task_group() as tg:
        for _ in range(200):
            tg.start_soon(one)
    assert allowed.count(True) == 50


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "gcra"])
async def test_a_repeated_bucket_keeps_the_state_of_its_last_hit(
    store: Any, algorithm: str
) -> None:
    """A bucket hit twice in one call is decided each time against its state before the
    call and keeps its last hit's state: a hit of cost 1 then of cost 0 charges nothing,
    yet is refused (charging no other tier) once the bucket is exhausted."""

    def hit(key: str, cost: int, limit: int = 2) -> RateLimitHit:
        return RateLimitHit(key, algorithm, limit, 60_000, cost)  # type: ignore[arg-type]

    for _ in range(3):
        decisions = await store.hit([hit("other", 1, 10), hit("probe", 1), hit("probe", 0)])
        assert [d.allowed for d in decisions] == [True, True, True]
        assert decisions[2].remaining == 2
    assert (await store.hit([hit("probe", 2)]))[0].allowed  # nothing was charged
    decisions = await store.hit([hit("other", 1, 10), hit("probe", 1), hit("probe", 0)])
    assert [d.allowed for d in decisions] == [True, False, True]
    assert decisions[2].remaining == 0
    assert (await store.hit([hit("other", 1, 10)]))[0].remaining == 6


# -- concurrency slots -----------------------------------------------------------------------


async def test_implements_the_concurrency_protocol(store: Any) -> None:
    """Every backend offers concurrency slots."""
    assert isinstance(store, ConcurrencyStore)


async def test_slots_are_taken_up_to_the_limit_and_given_back(store: Any) -> None:
    """``limit`` holders get a slot, the next does not, and a release frees one."""
    slot = [SlotRequest("k", 2)]
    assert await store.acquire_slots(slot, "a", lease_ms=LEASE) == [SlotDecision(True, 2, 1)]
    assert await store.acquire_slots(slot, "b", lease_ms=LEASE) == [SlotDecision(True, 2, 2)]
    assert await store.acquire_slots(slot, "c", lease_ms=LEASE) == [SlotDecision(False, 2, 2)]
    await store.release_slots(["k"], "a")
    await store.release_slots(["k"], "a")  # releasing twice is harmless
    assert await store.acquire_slots(slot, "c", lease_ms=LEASE) == [SlotDecision(True, 2, 2)]


async def test_slots_are_taken_all_or_none(store: Any) -> None:
    """When one key is full, no slot of the request's other keys is taken."""
    await store.acquire_slots([SlotRequest("full", 1)], "a", lease_ms=LEASE)
    decisions = await store.acquire_slots(
        [SlotRequest("roomy", 5), SlotRequest("full", 1)], "b", lease_ms=LEASE
    )
    assert decisions == [SlotDecision(False, 5, 0), SlotDecision(False, 1, 1)]
    assert (await store.acquire_slots([SlotRequest("roomy", 1)], "c", lease_ms=LEASE))[0].acquired


async def test_a_dead_holders_slot_frees_itself(store: Any, clock: FakeClock) -> None:
    """A lease not renewed before its deadline is no longer counted; a renewed one is."""
    slot = [SlotRequest("k", 2)]
    await store.acquire_slots(slot, "dead", lease_ms=1_000)
    await store.acquire_slots(slot, "alive", lease_ms=1_000)
    clock.advance(0.8)
    assert await store.renew_slots(["k"], "alive", lease_ms=1_000) is True
    clock.advance(0.5)
    assert await store.renew_slots(["k"], "dead", lease_ms=1_000) is False
    assert await store.acquire_slots(slot, "new", lease_ms=1_000) == [SlotDecision(True, 2, 2)]
    assert await store.acquire_slots(slot, "late", lease_ms=1_000) == [SlotDecision(False, 2, 2)]


async def test_slots_of_other_keys_are_independent(store: Any) -> None:
    """A full key leaves other keys free."""
    await store.acquire_slots([SlotRequest("x", 1)], "a", lease_ms=LEASE)
    assert (await store.acquire_slots([SlotRequest("y", 1)], "a", lease_ms=LEASE))[0].acquired


async def test_concurrent_acquisitions_never_exceed_the_limit(store: Any) -> None:
    """50 simultaneous acquisitions of a key with 5 slots: exactly 5 get one."""
    taken: list[bool] = []

    async def one(i: int) -> None:
        decision = await store.acquire_slots([SlotRequest("c", 5)], f"t{i}", lease_ms=LEASE)
        taken.append(decision[0].acquired)

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(one, i)
    assert taken.count(True) == 5
