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

from bastion.exceptions import ConfigurationError, StoreCapacityError
from bastion.ratelimit.algorithms import State, decide, expires_at
from bastion.stores.protocols import Claim, RateLimitDecision, RateLimitHit
from bastion.typing import Clock

__all__ = ["MemoryStore"]

DEFAULT_MAX_RECORDS = 100_000
DEFAULT_MAX_BUCKETS = 100_000
_SWEEP = 2

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
    one kind and duration, buckets of one algorithm and window. The store's clock never goes
    back, so each queue is in expiry order: expired entries gather at the fronts, and the entry
    expiring soonest is at the front of one of a handful of queues. Writes sweep expired
    entries from the front of the queue they append to; when the map is full, the fronts are
    compared: any expired entry goes first, then the lowest rank, then the soonest expiry.

    With ``indexed``, a dict says which queue holds each key. Without it a key is looked up in
    each queue in turn, which saves that dict's memory where there are only a few classes
    (idempotency records: one lease and one TTL per middleware). Either way no operation
    depends on how many entries the map holds, only on how many classes are in use.
    """

    __slots__ = ("_max", "_queues", "_size", "_where")

    def __init__(self, max_size: int, *, indexed: bool) -> None:
        self._where: dict[str, _Queue] | None = {} if indexed else None
        self._queues: dict[Hashable, _Queue] = {}
        self._max = max_size
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def _find(self, key: str) -> _Queue | None:
        if self._where is not None:
            return self._where.get(key)
        for queue in self._queues.values():
            if key in queue:
                return queue
        return None

    def get(self, key: str, now: int) -> _Entry | None:
        queue = self._find(key)
        if queue is None:
            return None
        entry = queue[key]
        if entry[0] <= now:
            self._remove(key, queue)
            return None
        return entry

    def put(self, key: str, cls: Hashable, rank: int | None, entry: _Entry, now: int) -> bool:
        """Write ``entry`` at the back of its class's queue; False when the key is new, the
        map is full and nothing in it may go."""
        old = self._find(key)
        if old is not None and old.cls == cls:
            old.move_to_end(key)
            old[key] = entry
            return True
        if old is not None:
            self._remove(key, old)
        elif self._size >= self._max and not self._evict(now):
            return False
        queue = self._queues.get(cls)  # after eviction, which may have emptied it
        if queue is None:
            queue = self._queues[cls] = _Queue(cls, rank)
        else:
            self._sweep(queue, now)
        queue[key] = entry
        if self._where is not None:
            self._where[key] = queue
        self._size += 1
        return True

    def delete(self, key: str) -> None:
        queue = self._find(key)
        if queue is not None:
            self._remove(key, queue)

    def _remove(self, key: str, queue: _Queue) -> None:
        del queue[key]
        if self._where is not None:
            del self._where[key]
        self._size -= 1
        if not queue:
            del self._queues[queue.cls]

    def _sweep(self, queue: _Queue, now: int) -> None:
        """Free up to a few expired entries from the front; the caller appends right after,
        so the queue is left in place even if this empties it."""
        where = self._where
        for _ in range(_SWEEP):
            if not queue:
                return
            key, entry = next(iter(queue.items()))
            if entry[0] > now:
                return
            del queue[key]
            if where is not None:
                del where[key]
            self._size -= 1

    def _evict(self, now: int) -> bool:
        victim: tuple[str, _Queue] | None = None
        best = (0, 0)
        for queue in self._queues.values():
            key, entry = next(iter(queue.items()))
            if entry[0] <= now:
                order = (-1, entry[0])
            elif queue.rank is None:
                continue
            else:
                order = (queue.rank, entry[0])
            if victim is None or order < best:
                victim, best = (key, queue), order
        if victim is None:
            return False
        self._remove(*victim)
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
    # Record classes: ("lease", lease_ms) may not be evicted while live; ("ttl", ttl_ms) may.

    async def claim(self, key: str, fingerprint: str, token: str, *, lease_ms: int) -> Claim:
        now = self._now()
        record = self._records.get(key, now)
        if record is not None:
            if record[3] is None:
                return Claim(False, record[1], None, record[0] - now)
            return Claim(False, record[1], record[3], 0)
        entry = (now + lease_ms, fingerprint, token, None)
        if not self._records.put(key, ("lease", lease_ms), None, entry, now):
            raise StoreCapacityError(
                f"the memory store holds {len(self._records)} requests in flight, its "
                "max_records; a new claim must wait until one of them finishes"
            )
        return Claim(True, fingerprint)

    def _held(self, key: str, token: str, now: int) -> _Entry | None:
        record = self._records.get(key, now)
        if record is None or record[2] != token or record[3] is not None:
            return None
        return record

    async def renew(self, key: str, token: str, *, lease_ms: int) -> bool:
        now = self._now()
        record = self._held(key, token, now)
        if record is None:
            return False
        entry = (now + lease_ms, record[1], token, None)
        return self._records.put(key, ("lease", lease_ms), None, entry, now)

    async def complete(self, key: str, token: str, response: bytes, *, ttl_ms: int) -> bool:
        now = self._now()
        record = self._held(key, token, now)
        if record is None:
            return False
        entry = (now + ttl_ms, record[1], token, response)
        return self._records.put(key, ("ttl", ttl_ms), _OPEN, entry, now)

    async def release(self, key: str, token: str) -> bool:
        if self._held(key, token, self._now()) is None:
            return False
        self._records.delete(key)
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
            entry = buckets.get(one.key, now)
            state = None if entry is None else (entry[1], entry[2], entry[3])
            decision, state = decide(one, state, now)
            decisions.append(decision)
            states.append(state)
            allowed = allowed and decision.allowed
        if allowed:
            for one, state, decision in zip(hits, states, decisions, strict=True):
                rank = _OPEN if decision.remaining else _SPENT
                buckets.put(
                    one.key,
                    (one.algorithm, one.window_ms, rank),
                    rank,
                    (expires_at(one, state), *state),
                    now,
                )
        return decisions
