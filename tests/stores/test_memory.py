"""The memory store stays bounded and frees expired entries first."""

from __future__ import annotations

import gc

import pytest

from bastion import ConfigurationError
from bastion.stores import MemoryStore, RateLimitHit
from tests.conftest import FakeClock

pytestmark = pytest.mark.anyio


async def test_records_are_bounded(clock: FakeClock) -> None:
    """Completed records beyond the bound evict the one expiring soonest (here the oldest)."""
    store = MemoryStore(max_records=10, clock=clock)
    for i in range(25):
        await store.claim(f"k{i}", "fp", "t", lease_ms=1000)
        await store.complete(f"k{i}", "t", b"r", ttl_ms=60_000)
    assert len(store._records) == 10
    assert (await store.claim("k24", "fp", "t", lease_ms=1000)).response == b"r"
    assert (await store.claim("k0", "fp", "t", lease_ms=1000)).acquired


async def test_expired_records_go_before_live_ones(clock: FakeClock) -> None:
    """When full, an expired record is freed rather than a live one."""
    store = MemoryStore(max_records=3, clock=clock)
    await store.claim("short", "fp", "t", lease_ms=10)
    for key in ("a", "b"):
        await store.claim(key, "fp", "t", lease_ms=1000)
        await store.complete(key, "t", b"r", ttl_ms=60_000)
    clock.advance(1)
    await store.claim("c", "fp", "t", lease_ms=1000)
    for key in ("a", "b"):
        assert (await store.claim(key, "fp", "x", lease_ms=1000)).response == b"r"


async def test_in_flight_leases_survive_eviction(clock: FakeClock) -> None:
    """Eviction skips a running request's lease, which guards against a duplicate run."""
    store = MemoryStore(max_records=3, clock=clock)
    await store.claim("running", "fp", "t", lease_ms=60_000)
    for i in range(5):
        await store.claim(f"done{i}", "fp", "t", lease_ms=1000)
        await store.complete(f"done{i}", "t", b"r", ttl_ms=60_000)
    assert not (await store.claim("running", "fp", "x", lease_ms=1000)).acquired


async def test_buckets_are_bounded(clock: FakeClock) -> None:
    """Rate-limit buckets are bounded the same way."""
    store = MemoryStore(max_buckets=5, clock=clock)
    for i in range(50):
        await store.hit([RateLimitHit(f"b{i}", "fixed_window", 10, 60_000)])
    assert len(store._buckets) == 5


def test_bounds_must_be_positive() -> None:
    """A store that can hold nothing is a configuration error."""
    with pytest.raises(ConfigurationError):
        MemoryStore(max_records=0)


def _gc_visits() -> int:
    """References a full collection follows: what its pause grows with."""
    gc.collect()
    return sum(len(gc.get_referents(o)) for o in gc.get_objects())


async def test_stored_state_is_invisible_to_the_cyclic_gc(clock: FakeClock) -> None:
    """Records, buckets and concurrency slots add almost nothing to what a full collection
    walks: far less than one reference per entry held."""
    entries = 20_000
    store = MemoryStore(max_records=entries, max_buckets=entries, clock=clock)
    before = _gc_visits()
    for i in range(entries):
        await store.claim(f"r{i}", "ab" * 32, f"t{i}", lease_ms=30_000)
        if i % 2:
            await store.complete(f"r{i}", f"t{i}", b"stored response", ttl_ms=60_000)
        await store.hit([RateLimitHit(f"b{i}", "fixed_window", 10, 60_000, 1)])
    await store.acquire_slots([(f"s{i}", 5) for i in range(100)], "holder", lease_ms=30_000)
    assert len(store._records) == len(store._buckets) == entries
    assert _gc_visits() - before < entries / 4


def test_chunked_queue_keeps_fifo_order_across_chunks() -> None:
    """Appends, removals from anywhere and rewrites keep the memory store's queues in write
    order, the front always the oldest entry, across many chunks (checked against an
    OrderedDict)."""
    from collections import OrderedDict
    from random import Random

    from bastion.stores._expiring import Queue as _Queue

    rng = Random(14)
    queue, model = _Queue("cls", 0, 0), OrderedDict[str, bytes]()
    for step in range(20_000):
        roll = rng.random()
        if roll < 0.5 or not model:
            key = f"k{step}"
            queue.append(key, b"%d" % step)
            model[key] = b"%d" % step
        elif roll < 0.7:
            key = next(iter(model))
            queue.pop(key)
            del model[key]
        elif roll < 0.85:
            key = rng.choice(list(model))
            queue.pop(key)
            del model[key]
        else:
            key = rng.choice(list(model))
            queue.replace(key, b"r%d" % step)
            del model[key]
            model[key] = b"r%d" % step
        assert len(queue) == len(model)
        assert queue.front() == next(iter(model.items()), None)
    for key, entry in model.items():
        assert queue.get(key) == entry
