"""MemoryStore: the cost of one operation at 1k, 100k and 1M entries, full, with the GC on.

A store that scans its records on each claim gets slower as it fills (DESIGN.md, section 6);
this one must not. For each size the store is filled to its bound, then each operation is
timed while the store stays full, so every new key also pays for an eviction:

- ``claim+complete``: a new idempotency key claimed and its response stored (a first run);
- ``replay``: a claim on a stored key (a retry);
- ``hit new key``: a rate-limit hit on a new bucket, which evicts another;
- ``hit known key``: a hit on an existing bucket.

The cyclic garbage collector stays enabled, as in a service, and the time of one full
collection at that size is reported too: entries are tuples the collector stops tracking,
so it stays short however many the store holds. Store calls are awaited directly (they never
suspend), in interleaved rounds; each cell is the best round.

    python benchmarks/bench_memory_store.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Awaitable, Callable

from bastion.stores import MemoryStore, RateLimitHit

LEASE_MS = 30_000
TTL_MS = 86_400_000
FINGERPRINT = "f" * 64
RESPONSE = b'{"status":201,"headers":[],"body":"ok"}'


class Clock:
    """Advances 1 µs per read, so time moves but nothing the benchmark wrote expires."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        self.now += 0.000_001
        return self.now


Op = Callable[[int], Awaitable[object]]


async def best_round(op: Op, start: int, ops: int, rounds: int) -> float:
    """Microseconds per operation in the fastest of ``rounds`` rounds of ``ops`` calls."""
    best = float("inf")
    n = start
    for _ in range(rounds):
        began = time.perf_counter()
        for i in range(n, n + ops):
            await op(i)
        best = min(best, time.perf_counter() - began)
        n += ops
    return best / ops * 1e6


async def records(size: int, ops: int, rounds: int) -> dict[str, float]:
    store = MemoryStore(max_records=size, clock=Clock())

    async def first_run(i: int) -> None:
        key = f"tenant:key-{i:09d}"
        await store.claim(key, FINGERPRINT, f"tok{i}", lease_ms=LEASE_MS)
        await store.complete(key, f"tok{i}", RESPONSE, ttl_ms=TTL_MS)

    async def replay(i: int) -> None:
        await store.claim(f"tenant:key-{size + i % size:09d}", FINGERPRINT, "x", lease_ms=LEASE_MS)

    for i in range(size):
        await first_run(i)
    result = {"claim+complete": await best_round(first_run, size, ops, rounds)}
    assert len(store._records) == size
    result["replay"] = await best_round(replay, 0, ops, rounds)
    result["gc.collect() ms, records"] = full_collection_ms()
    return result


async def buckets(size: int, ops: int, rounds: int) -> dict[str, float]:
    store = MemoryStore(max_buckets=size, clock=Clock())

    def hit(n: int) -> list[RateLimitHit]:
        # built per call, as the middleware does: a list of a million would be timed by the GC
        return [RateLimitHit(f"ip:{n:09d}", "fixed_window", 1_000_000, 60_000)]

    async def new_key(i: int) -> None:
        await store.hit(hit(size + i))

    async def known_key(i: int) -> None:
        await store.hit(hit(size + ops * rounds - 1 - i % size))

    for n in range(size):
        await store.hit(hit(n))
    result = {"hit new key": await best_round(new_key, 0, ops, rounds)}
    assert len(store._buckets) == size
    result["hit known key"] = await best_round(known_key, 0, ops, rounds)
    result["gc.collect() ms, buckets"] = full_collection_ms()
    return result


def full_collection_ms() -> float:
    gc.collect()
    began = time.perf_counter()
    gc.collect()
    return (time.perf_counter() - began) * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer operations per round")
    args = parser.parse_args()
    ops, rounds = (2_000, 3) if args.quick else (20_000, 5)
    sizes = (1_000, 100_000, 1_000_000)
    print(f"MemoryStore, full, GC enabled: µs per operation, best of {rounds} x {ops:,}")
    table: dict[int, dict[str, float]] = {}
    for size in sizes:
        table[size] = await records(size, ops, rounds)
        gc.collect()
        table[size] |= await buckets(size, ops, rounds)
        gc.collect()
    columns = list(table[sizes[0]])
    print(f"{'entries':>10}" + "".join(f"{name:>27}" for name in columns))
    for size in sizes:
        print(f"{size:>10,}" + "".join(f"{table[size][name]:>27.2f}" for name in columns))


if __name__ == "__main__":
    asyncio.run(main())
