"""A full MemoryStore never breaks at-most-once: what it evicts, in which order, and what it
refuses instead."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from bastion import IdempotencyMiddleware, IdempotencySettings
from bastion.exceptions import StoreCapacityError, StoreError
from bastion.observe import IdempotencyOutcome, RateLimitOutcome
from bastion.stores import MemoryStore, RateLimitHit
from bastion.typing import Receive, Scope, Send
from tests.conftest import FakeClock

pytestmark = pytest.mark.anyio

LEASE = 30_000
TTL = 86_400_000


async def _stored(store: MemoryStore, key: str, ttl_ms: int = TTL) -> None:
    assert (await store.claim(key, "fp", f"t-{key}", lease_ms=LEASE)).acquired
    assert await store.complete(key, f"t-{key}", key.encode(), ttl_ms=ttl_ms)


async def _replayed(store: MemoryStore, key: str) -> bool:
    return (await store.claim(key, "fp", "probe", lease_ms=LEASE)).response == key.encode()


async def _held(store: MemoryStore, key: str) -> bool:
    claim = await store.claim(key, "fp", "probe", lease_ms=LEASE)
    return not claim.acquired and claim.response is None


async def test_full_of_live_leases_refuses_a_new_claim(clock: FakeClock) -> None:
    """When every record is a running request's lease, a new claim raises StoreCapacityError
    and every lease stays held; a lease that ends (released or expired) makes room again."""
    store = MemoryStore(max_records=3, clock=clock)
    await store.claim("a", "fp", "ta", lease_ms=LEASE)
    await store.claim("b", "fp", "tb", lease_ms=LEASE)
    await store.claim("short", "fp", "ts", lease_ms=1_000)
    with pytest.raises(StoreCapacityError):
        await store.claim("new", "fp", "tn", lease_ms=LEASE)
    assert issubclass(StoreCapacityError, StoreError)
    assert [await _held(store, key) for key in ("a", "b", "short")] == [True, True, True]
    clock.advance(1.5)  # the short lease's holder is presumed dead: its record may go
    assert (await store.claim("new", "fp", "tn", lease_ms=LEASE)).acquired
    with pytest.raises(StoreCapacityError):
        await store.claim("newer", "fp", "tx", lease_ms=LEASE)
    assert await store.release("a", "ta")
    assert (await store.claim("newer", "fp", "tx", lease_ms=LEASE)).acquired
    assert await store.complete("b", "tb", b"b", ttl_ms=TTL)
    assert await store.renew("new", "tn", lease_ms=LEASE)


async def test_duplicates_are_answered_when_full(clock: FakeClock) -> None:
    """A full store still answers claims on keys it holds: only new keys are refused."""
    store = MemoryStore(max_records=2, clock=clock)
    await store.claim("running", "fp", "t1", lease_ms=LEASE)
    await store.claim("done", "fp", "t2", lease_ms=LEASE)
    with pytest.raises(StoreCapacityError):
        await store.claim("new", "fp", "t3", lease_ms=LEASE)
    assert await _held(store, "running")
    assert await store.complete("done", "t2", b"done", ttl_ms=TTL)
    assert await _replayed(store, "done")


async def test_expired_records_go_before_live_ones(clock: FakeClock) -> None:
    """An expired record is freed before a live one, even when the live one was written
    earlier."""
    store = MemoryStore(max_records=3, clock=clock)
    await _stored(store, "old-but-live")
    await _stored(store, "b", ttl_ms=1_000)
    await _stored(store, "c", ttl_ms=1_000)
    clock.advance(2)
    await _stored(store, "d")
    await _stored(store, "e")
    assert await _replayed(store, "old-but-live")
    assert await _replayed(store, "d")


async def test_live_record_stays_while_an_expired_lease_is_there(clock: FakeClock) -> None:
    """A crashed request's expired lease goes before a stored response that is still live."""
    store = MemoryStore(max_records=3, clock=clock)
    await _stored(store, "done")
    await store.claim("crashed", "fp", "tc", lease_ms=1_000)
    await store.claim("running", "fp", "tr", lease_ms=LEASE)
    clock.advance(2)
    assert (await store.claim("new", "fp", "tn", lease_ms=LEASE)).acquired
    assert await _replayed(store, "done")
    assert await _held(store, "running")
    assert len(store._records) == 3


async def test_live_records_leave_soonest_expiry_first(clock: FakeClock) -> None:
    """With nothing expired, the record that expires soonest goes, not the oldest write."""
    store = MemoryStore(max_records=3, clock=clock)
    await _stored(store, "long")
    await _stored(store, "short", ttl_ms=60_000)
    await store.claim("running", "fp", "tr", lease_ms=LEASE)
    await _stored(store, "new")
    assert await _replayed(store, "long")
    assert await _held(store, "running")
    assert await _replayed(store, "new")
    assert (await store.claim("short", "fp", "x", lease_ms=LEASE)).acquired


async def test_renewal_after_the_clock_steps_back_keeps_the_lease(clock: FakeClock) -> None:
    """The store's time never goes back: a lease renewed while the clock is 30 s behind still
    runs its full length from the latest time seen, so no second claim gets in early."""
    store = MemoryStore(clock=clock)
    await store.claim("k", "fp", "t1", lease_ms=LEASE)
    clock.step_back(30)
    assert (await store.claim("k", "fp", "t2", lease_ms=LEASE)).lease_remaining_ms == LEASE
    assert await store.renew("k", "t1", lease_ms=LEASE)
    clock.advance(30 + 20)
    assert await _held(store, "k")
    assert await store.complete("k", "t1", b"k", ttl_ms=10_000)
    clock.step_back(30)
    clock.advance(30 + 9)
    assert await _replayed(store, "k")


def _hit(key: str, algorithm: str, limit: int = 3) -> RateLimitHit:
    return RateLimitHit(key, algorithm, limit, 60_000)  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "gcra"])
async def test_flood_does_not_reset_an_exhausted_bucket(clock: FakeClock, algorithm: str) -> None:
    """Another client's flood of new keys evicts fresher buckets, never the exhausted one."""
    store = MemoryStore(max_buckets=10, clock=clock)
    for _ in range(3):
        await store.hit([_hit("spent", algorithm)])
    for i in range(50):
        clock.advance(0.01)
        assert (await store.hit([_hit(f"flood{i}", algorithm)]))[0].allowed
    assert len(store._buckets) == 10
    assert not (await store.hit([_hit("spent", algorithm)]))[0].allowed


async def test_expired_buckets_go_before_live_ones(clock: FakeClock) -> None:
    """A bucket whose window has passed is freed before one still counting."""
    store = MemoryStore(max_buckets=3, clock=clock)
    await store.hit([RateLimitHit("live", "fixed_window", 5, 3_600_000)])
    await store.hit([RateLimitHit("a", "fixed_window", 5, 1_000)])
    await store.hit([RateLimitHit("b", "fixed_window", 5, 1_000)])
    clock.advance(2)
    await store.hit([RateLimitHit("c", "fixed_window", 5, 1_000)])
    await store.hit([RateLimitHit("d", "fixed_window", 5, 1_000)])
    decision = (await store.hit([RateLimitHit("live", "fixed_window", 5, 3_600_000)]))[0]
    assert decision.remaining == 3


class _Recorder:
    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def idempotency(self, scope: Scope, outcome: IdempotencyOutcome) -> None:
        self.outcomes.append(outcome)

    def rate_limit(self, scope: Scope, tier: str, outcome: RateLimitOutcome) -> None:
        return None

    def store_call(self, backend: str, operation: str, seconds: float, *, error: bool) -> None:
        return None


@pytest.mark.parametrize("fail_open", [False, True])
async def test_full_store_answers_503_and_never_runs_the_handler(
    clock: FakeClock, fail_open: bool
) -> None:
    """Through the middleware a claim the full store refuses is a 503 problem+json with
    Retry-After, failing open or not: running it unprotected could run it twice."""
    calls: list[str] = []
    inside = anyio.Event()
    release = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope["path"])
        if len(calls) == 2:
            inside.set()
        if len(calls) <= 2:
            await release.wait()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    observer = _Recorder()
    middleware = IdempotencyMiddleware(
        app,
        store=MemoryStore(max_records=2, clock=clock),
        settings=IdempotencySettings(fail_open=fail_open),
        observer=observer,
    )
    transport = httpx.ASGITransport(app=middleware)
    statuses: list[int] = []
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

        async def post(key: str) -> None:
            response = await client.post("/pay", headers={"Idempotency-Key": key}, content=b"{}")
            statuses.append(response.status_code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(post, "k1")
            tg.start_soon(post, "k2")
            await inside.wait()
            refused = await client.post("/pay", headers={"Idempotency-Key": "k3"}, content=b"{}")
            release.set()
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["retry-after"] == "1"
    problem: dict[str, Any] = refused.json()
    assert problem["type"].endswith("idempotency-store-full")
    assert problem["status"] == 503
    assert statuses == [201, 201]
    assert calls == ["/pay", "/pay"]
    assert observer.outcomes.count("store_error") == 1
