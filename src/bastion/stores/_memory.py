"""An in-process store: bounded, O(1) per operation, for tests and single-process services.

Atomicity comes from the event loop: no primitive awaits between reading and writing, so
concurrent tasks of one process can never interleave inside one. It is not shared between
processes or threads; use the Redis or SQL store for that.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

from bastion._core.algorithms import State, decide, expires_at
from bastion.exceptions import ConfigurationError, StoreCapacityError
from bastion.stores._protocols import (
    Claim,
    RateLimitDecision,
    RateLimitHit,
    SlotDecision,
    SlotRequest,
)
from bastion.typing import Clock

__all__ = ["MemoryStore"]

DEFAULT_MAX_RECORDS = 100_000
DEFAULT_MAX_BUCKETS = 100_000
_SWEEP = 2
_IDLE_QUEUES = 16

# An entry is a flat tuple whose first item is its expiry (ms): a record is (expires_at,
# fingerprint, token, response or None while in flight), a bucket (expires_at, *state).
# Tuples of ints, strings, bytes and None are untracked by the cyclic GC once it has seen them,
# so a million entries add nothing to collector pauses; objects with __slots__ stay tracked.
_Entry = tuple[Any, ...]

_OPEN = 0
_SPENT = 1


class _Queue(OrderedDict[str, _Entry]):
    """The entries of one class, oldest write first. ``rank`` orders classes for eviction
    (lower goes first); None means an entry may only go once it has expired."""

    __slots__ = ("cls", "rank")

    def __init__(self, cls: Hashable, rank: int | None) -> None:
        super().__init__()
        self.cls = cls
        self.rank = rank


class _ExpiringMap:
    """A bounded map of expiring entries, each in the FIFO queue of its class.

    A class groups entries whose expiry only grows with the time they are written: records of
    one kind and duration, buckets of one algorithm, window and rank (spent or not). The
    store's clock never goes back, so each queue is in expiry order: expired entries gather at
    the fronts, and the entry expiring soonest is at the front of one of a handful of queues.
    (GCRA buckets are the exception: their expiry is the write time plus up to one window, so
    their queues are in the order they were last charged, expiry order to within a window.)
    Writes sweep expired
    entries from the front of the queue they append to; when the map is full, the fronts are
    compared: any expired entry goes first, then the lowest rank, then the soonest expiry.

    With ``indexed``, a dict says which queue holds each key. Without it a key is looked up in
    each queue in turn, which saves that dict's memory where there are only a few classes
    (idempotency records: one lease and one TTL per middleware). Either way no operation
    depends on how many entries the map holds, only on how many classes are in use. Queues
    that empty stay (a class in use empties and fills all the time) until there are too many.
    """

    __slots__ = ("_max", "_queues", "_size", "_where")

    def __init__(self, max_size: int, *, indexed: bool) -> None:
        self._where: dict[str, _Queue] | None = {} if indexed else None
        self._queues: dict[Hashable, _Queue] = {}
        self._max = max_size
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def find(self, key: str) -> _Queue | None:
        """The queue holding ``key``, expired or not."""
        if self._where is not None:
            return self._where.get(key)
        for queue in self._queues.values():
            if key in queue:
                return queue
        return None

    def remove(self, key: str, queue: _Queue) -> None:
        del queue[key]
        if self._where is not None:
            del self._where[key]
        self._size -= 1

    def add(self, key: str, cls: Hashable, rank: int | None, entry: _Entry, now: int) -> bool:
        """Append a key known to be absent; False when the map is full and nothing in it may
        go."""
        if self._size >= self._max and not self._evict(now):
            return False
        queue = self._queues.get(cls)
        if queue is None:
            queue = self._queue(cls, rank)
        elif queue:
            self._sweep(queue, now)
        queue[key] = entry
        if self._where is not None:
            self._where[key] = queue
        self._size += 1
        return True

    def move(
        self, key: str, old: _Queue, cls: Hashable, rank: int | None, entry: _Entry, now: int
    ) -> None:
        """Rewrite a present key (found in ``old``) at the back of its class's queue."""
        if old.cls == cls:
            old.move_to_end(key)
            old[key] = entry
            return
        del old[key]
        queue = self._queues.get(cls)
        if queue is None:
            queue = self._queue(cls, rank)
        elif queue:
            self._sweep(queue, now)
        queue[key] = entry
        if self._where is not None:
            self._where[key] = queue

    def _queue(self, cls: Hashable, rank: int | None) -> _Queue:
        queue = self._queues[cls] = _Queue(cls, rank)
        if len(self._queues) > _IDLE_QUEUES:
            for idle in [q.cls for q in self._queues.values() if not q]:
                del self._queues[idle]
            self._queues[cls] = queue
        return queue

    def _sweep(self, queue: _Queue, now: int) -> None:
        for _ in range(_SWEEP):
            key = next(iter(queue))
            if queue[key][0] > now:
                return
            self.remove(key, queue)
            if not queue:
                return

    def _evict(self, now: int) -> bool:
        victim: _Queue | None = None
        best_rank = best_expiry = 0
        for queue in self._queues.values():
            if not queue:
                continue
            expires = queue[next(iter(queue))][0]
            if expires <= now:
                rank = -1
            elif queue.rank is None:
                continue
            else:
                rank = queue.rank
            if victim is None or rank < best_rank or (rank == best_rank and expires < best_expiry):
                victim, best_rank, best_expiry = queue, rank, expires
        if victim is None:
            return False
        self.remove(next(iter(victim)), victim)
        return True


class MemoryStore:
    """Idempotency records and rate-limit buckets in this process's memory.

    ``max_records`` and ``max_buckets`` bound memory. When full, expired entries go first, then
    the live one that expires soonest; an exhausted rate-limit bucket goes only after every
    bucket with quota left, and the lease of a request still running never goes: a claim that
    would need to evict one raises `StoreCapacityError` instead (the middleware answers 503).
    ``clock`` returns seconds and is injectable so tests never sleep; the store never lets its
    own "now" go back, so a clock stepped backwards expires nothing early.
    """

    backend = "memory"
    suspends = False
    """Its primitives never await, so nothing can interrupt one half done: the idempotency
    middleware need not shield its claims from cancellation (a shield costs ~2.5 µs). A
    subclass whose primitives await must set it back to True."""

    def __init__(
        self,
        *,
        max_records: int = DEFAULT_MAX_RECORDS,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
        clock: Clock = time.time,
    ) -> None:
        if max_records < 1 or max_buckets < 1:
            raise ConfigurationError("max_records and max_buckets must be at least 1")
        self._records = _ExpiringMap(max_records, indexed=False)
        self._buckets = _ExpiringMap(max_buckets, indexed=True)
        self._slots = _ExpiringMap(max_buckets, indexed=True)
        self._clock = clock
        self._last = 0

    def _now(self) -> int:
        now = int(self._clock() * 1000)
        if now > self._last:
            self._last = now
        return self._last

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    # -- idempotency ------------------------------------------------------------------------
    # Record classes are ints: 2 * lease_ms for leases in flight, which may not be evicted
    # while live, and 2 * ttl_ms + 1 for stored responses.

    async def claim(self, key: str, fingerprint: str, token: str, *, lease_ms: int) -> Claim:
        now = self._now()
        records = self._records
        queue = records.find(key)
        if queue is not None:
            record = queue[key]
            if record[0] > now:
                if record[3] is None:
                    return Claim(False, record[1], None, record[0] - now)
                return Claim(False, record[1], record[3], 0)
            records.remove(key, queue)
        entry = (now + lease_ms, fingerprint, token, None)
        if not records.add(key, 2 * lease_ms, None, entry, now):
            raise StoreCapacityError(
                f"the memory store holds {len(records)} requests in flight, its max_records; "
                "a new claim must wait until one of them finishes"
            )
        return Claim(True, fingerprint)

    def _held(self, key: str, token: str, now: int) -> tuple[_Queue, _Entry] | None:
        records = self._records
        queue = records.find(key)
        if queue is None:
            return None
        record = queue[key]
        if record[0] <= now:
            records.remove(key, queue)
            return None
        if record[2] != token or record[3] is not None:
            return None
        return queue, record

    async def renew(self, key: str, token: str, *, lease_ms: int) -> bool:
        now = self._now()
        held = self._held(key, token, now)
        if held is None:
            return False
        queue, record = held
        # never shorten: a renewal asking for less time than is left keeps the deadline
        entry = (max(record[0], now + lease_ms), record[1], token, None)
        self._records.move(key, queue, 2 * lease_ms, None, entry, now)
        return True

    async def complete(self, key: str, token: str, response: bytes, *, ttl_ms: int) -> bool:
        now = self._now()
        held = self._held(key, token, now)
        if held is None:
            return False
        queue, record = held
        entry = (now + ttl_ms, record[1], token, response)
        self._records.move(key, queue, 2 * ttl_ms + 1, _OPEN, entry, now)
        return True

    async def release(self, key: str, token: str) -> bool:
        held = self._held(key, token, self._now())
        if held is None:
            return False
        self._records.remove(key, held[0])
        return True

    # -- rate limits ------------------------------------------------------------------------
    # Bucket classes: (algorithm, window_ms, spent). A spent bucket (no quota left) ranks
    # after every open one, so a flood of new keys cannot hand an exhausted client its quota
    # back while a fresher bucket could go instead.

    async def hit(self, hits: Sequence[RateLimitHit]) -> list[RateLimitDecision]:
        now = self._now()
        buckets = self._buckets
        decisions: list[RateLimitDecision] = []
        states: list[State] = []
        allowed = True
        for one in hits:
            queue = buckets.find(one.key)
            state = None
            if queue is not None:
                entry = queue[one.key]
                if entry[0] > now:
                    state = (entry[1], entry[2], entry[3])
                else:
                    buckets.remove(one.key, queue)
                    queue = None
            decision, state = decide(one, state, now)
            decisions.append(decision)
            states.append(state)
            allowed = allowed and decision.allowed
        if allowed:
            for one, state, decision in zip(hits, states, decisions, strict=True):
                rank = _OPEN if decision.remaining else _SPENT
                cls = (one.algorithm, one.window_ms, rank)
                entry = (expires_at(one, state), *state)
                queue = buckets.find(one.key)  # again: two hits may share a key
                if queue is None:
                    buckets.add(one.key, cls, rank, entry, now)
                else:
                    buckets.move(one.key, queue, cls, rank, entry, now)
        return decisions

    # -- concurrency slots ------------------------------------------------------------------
    # One entry per key, (expires_at, {token: deadline}), expiring with its last holder's
    # lease. A key with a live holder is never evicted (rank None), like a lease in flight: it
    # guards running requests, and dropping it would admit one too many.

    def _holders(self, key: str, now: int) -> tuple[_Queue | None, dict[str, int]]:
        slots = self._slots
        queue = slots.find(key)
        if queue is None:
            return None, {}
        entry = queue[key]
        if entry[0] <= now:
            slots.remove(key, queue)
            return None, {}
        holders: dict[str, int] = entry[1]
        for token in [t for t, until in holders.items() if until <= now]:
            del holders[token]
        return queue, holders

    def _keep(
        self, key: str, queue: _Queue | None, holders: dict[str, int], lease_ms: int, now: int
    ) -> bool:
        entry = (max(holders.values()), holders)
        if queue is None:
            return self._slots.add(key, ("slot", lease_ms), None, entry, now)
        self._slots.move(key, queue, ("slot", lease_ms), None, entry, now)
        return True

    async def acquire_slots(
        self, slots: Sequence[SlotRequest], token: str, *, lease_ms: int
    ) -> list[SlotDecision]:
        now = self._now()
        found = [self._holders(key, now) for key, _ in slots]
        acquired = all(
            len(h) < limit or token in h for (_, h), (_, limit) in zip(found, slots, strict=True)
        )
        if acquired:
            kept: list[str] = []
            for (queue, holders), (key, _) in zip(found, slots, strict=True):
                holders[token] = now + lease_ms
                if not self._keep(key, queue, holders, lease_ms, now):
                    del holders[token]
                    await self.release_slots(kept, token)
                    raise StoreCapacityError(
                        f"the memory store holds {len(self._slots)} keys with requests in "
                        "flight, its max_buckets; no concurrency slot can be taken"
                    )
                kept.append(key)
        return [
            SlotDecision(acquired, limit, len(holders))
            for (_, holders), (_, limit) in zip(found, slots, strict=True)
        ]

    async def renew_slots(self, keys: Sequence[str], token: str, *, lease_ms: int) -> bool:
        now = self._now()
        held = True
        for key in keys:
            queue, holders = self._holders(key, now)
            if token not in holders:
                held = False
                continue
            holders[token] = now + lease_ms
            self._keep(key, queue, holders, lease_ms, now)
        return held

    async def release_slots(self, keys: Sequence[str], token: str) -> None:
        now = self._now()
        for key in keys:
            queue, holders = self._holders(key, now)
            if holders.pop(token, None) is not None and not holders and queue is not None:
                self._slots.remove(key, queue)
