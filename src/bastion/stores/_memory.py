"""An in-process store: bounded, O(1) per operation, for tests and single-process services.

Atomicity comes from the event loop: no primitive awaits between reading and writing, so
concurrent tasks of one process can never interleave inside one. It is not shared between
processes or threads; use the Redis or SQL store for that.
"""

from __future__ import annotations

import itertools
import struct
import time
from collections.abc import Hashable, Sequence

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

# An entry is bytes that start with its expiry (ms, signed 64-bit big-endian). A record is
# `_RECORD` (expiry, flags, fingerprint length), the fingerprint, then the lease's token while
# in flight or the stored response once completed; a bucket is `_BUCKET` (expiry, *state); a
# key's concurrency slots are the expiry then each holder's deadline and token. Bytes are
# never tracked by the cyclic GC, and neither is a plain dict holding only strings, ints and
# bytes: the chunks and indexes below stay invisible to it however many entries they hold, so
# a million records add nothing to a collection's pause, and none survive into the old
# generation to trigger full collections. (Tuples would be tracked until a collection looked
# at them, and a dict is tracked from the first tracked value put in it.)
_EXPIRY = struct.Struct(">q")
_RECORD = struct.Struct(">qBI")
_BUCKET = struct.Struct(">qqqq")
_HOLDER = struct.Struct(">qH")
_DONE = 1  # record flag: a stored response follows the fingerprint, not a token
_RAW = 2  # record flag: the fingerprint was lower-case hex, kept as the bytes it spells
_CHUNK = 32
"""Entries per chunk of a queue: the most ``next(iter(chunk))`` skips over to find the front."""

_OPEN = 0
_SPENT = 1


def _expiry(entry: bytes) -> int:
    expires: int = _EXPIRY.unpack_from(entry)[0]
    return expires


def _pack_fingerprint(fingerprint: str) -> tuple[int, bytes]:
    """A hex digest as the bytes it spells (32 instead of 64 characters), anything else as
    UTF-8; the flag says which, so `_unpack_fingerprint` gives back the same string."""
    try:
        raw = bytes.fromhex(fingerprint)
    except ValueError:
        raw = None
    if raw is not None and raw.hex() == fingerprint:
        return _RAW, raw
    return 0, fingerprint.encode("utf-8", "surrogatepass")


def _unpack_fingerprint(flags: int, data: bytes) -> str:
    return data.hex() if flags & _RAW else data.decode("utf-8", "surrogatepass")


class _Queue:
    """The entries of one class, oldest write first, in chunks of `_CHUNK` plain dicts.

    ``rank`` orders classes for eviction (lower goes first); None means an entry may only go
    once it has expired. A chunk takes no new entry once full and goes once empty, so the
    front is found after skipping at most `_CHUNK` removed slots, whatever the queue holds.
    """

    __slots__ = ("chunks", "cls", "first", "last", "number", "rank", "where")

    def __init__(self, cls: Hashable, rank: int | None, number: int) -> None:
        self.cls = cls
        self.rank = rank
        self.number = number
        self.where: dict[str, int] = {}
        self.chunks: dict[int, dict[str, bytes]] = {0: {}}
        self.first = 0
        self.last = 0

    def __len__(self) -> int:
        return len(self.where)

    def get(self, key: str) -> bytes | None:
        n = self.where.get(key)
        return None if n is None else self.chunks[n][key]

    def append(self, key: str, entry: bytes) -> None:
        chunk = self.chunks[self.last]
        if len(chunk) >= _CHUNK:
            self.last += 1
            chunk = self.chunks[self.last] = {}
        chunk[key] = entry
        self.where[key] = self.last

    def replace(self, key: str, entry: bytes) -> None:
        """Rewrite a present key at the back."""
        self.pop(key)
        self.append(key, entry)

    def pop(self, key: str) -> None:
        n = self.where.pop(key)
        chunk = self.chunks[n]
        del chunk[key]
        if not chunk and n != self.last:
            del self.chunks[n]

    def front(self) -> tuple[str, bytes] | None:
        """The oldest key and its entry, or None when empty."""
        if not self.where:
            return None
        chunks = self.chunks
        while self.first not in chunks:
            self.first += 1
        # every chunk but the last goes once empty, so this one holds the oldest entry
        return next(iter(chunks[self.first].items()), None)


class _ExpiringMap:
    """A bounded map of expiring entries, each in the FIFO queue of its class.

    A class groups entries whose expiry only grows with the time they are written: records of
    one kind and duration, buckets of one algorithm, window and rank (spent or not). The
    store's clock never goes back, so each queue is in expiry order: expired entries gather at
    the fronts, and the entry expiring soonest is at the front of one of a handful of queues.
    (GCRA buckets are the exception: their expiry is the write time plus up to one window, so
    their queues are in the order they were last charged, expiry order to within a window.)
    Writes sweep expired entries from the front of the queue they append to; when the map is
    full, the fronts are compared: any expired entry goes first, then the lowest rank, then
    the soonest expiry.

    With ``indexed``, a dict says which queue (by number) holds each key. Without it a key is
    looked up in each queue in turn, which saves that dict's memory where there are only a few
    classes (idempotency records: one lease and one TTL per middleware). Either way no
    operation depends on how many entries the map holds, only on how many classes are in use.
    Queues that empty stay (a class in use empties and fills all the time) until there are too
    many.
    """

    __slots__ = ("_max", "_numbered", "_numbers", "_queues", "_size", "_where")

    def __init__(self, max_size: int, *, indexed: bool) -> None:
        self._where: dict[str, int] | None = {} if indexed else None
        self._queues: dict[Hashable, _Queue] = {}
        self._numbered: dict[int, _Queue] = {}
        self._numbers = itertools.count()
        self._max = max_size
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def find(self, key: str) -> _Queue | None:
        """The queue holding ``key``, expired or not."""
        if self._where is not None:
            number = self._where.get(key)
            return None if number is None else self._numbered[number]
        for queue in self._queues.values():
            if key in queue.where:
                return queue
        return None

    def lookup(self, key: str) -> tuple[_Queue, bytes] | None:
        """The queue holding ``key`` and its entry, expired or not."""
        if self._where is not None:
            number = self._where.get(key)
            if number is None:
                return None
            queue = self._numbered[number]
            return queue, queue.chunks[queue.where[key]][key]
        for queue in self._queues.values():
            n = queue.where.get(key)
            if n is not None:
                return queue, queue.chunks[n][key]
        return None

    def remove(self, key: str, queue: _Queue) -> None:
        queue.pop(key)
        if self._where is not None:
            del self._where[key]
        self._size -= 1

    def add(self, key: str, cls: Hashable, rank: int | None, entry: bytes, now: int) -> bool:
        """Append a key known to be absent; False when the map is full and nothing in it may
        go."""
        if self._size >= self._max and not self._evict(now):
            return False
        queue = self._queues.get(cls)
        if queue is None:
            queue = self._queue(cls, rank)
        elif queue.where:
            self._sweep(queue, now)
        chunk = queue.chunks[queue.last]
        if len(chunk) >= _CHUNK:
            queue.append(key, entry)
        else:
            chunk[key] = entry
            queue.where[key] = queue.last
        if self._where is not None:
            self._where[key] = queue.number
        self._size += 1
        return True

    def move(
        self, key: str, old: _Queue, cls: Hashable, rank: int | None, entry: bytes, now: int
    ) -> None:
        """Rewrite a present key (found in ``old``) at the back of its class's queue."""
        if old.cls == cls:
            n = old.where[key]
            if n == old.last:  # the common case: rewritten at the back of the back chunk
                chunk = old.chunks[n]
                del chunk[key]
                chunk[key] = entry
            else:
                old.replace(key, entry)
            return
        old.pop(key)
        queue = self._queues.get(cls)
        if queue is None:
            queue = self._queue(cls, rank)
        elif queue.where:
            self._sweep(queue, now)
        chunk = queue.chunks[queue.last]
        if len(chunk) >= _CHUNK:
            queue.append(key, entry)
        else:
            chunk[key] = entry
            queue.where[key] = queue.last
        if self._where is not None:
            self._where[key] = queue.number

    def _queue(self, cls: Hashable, rank: int | None) -> _Queue:
        queue = self._queues[cls] = _Queue(cls, rank, next(self._numbers))
        self._numbered[queue.number] = queue
        if len(self._queues) > _IDLE_QUEUES:
            for idle in [q for q in self._queues.values() if not q.where]:
                del self._queues[idle.cls]
                del self._numbered[idle.number]
            self._queues[cls] = queue
            self._numbered[queue.number] = queue
        return queue

    def _sweep(self, queue: _Queue, now: int) -> None:
        for _ in range(_SWEEP):
            chunk = queue.chunks.get(queue.first)
            # the front chunk is nearly always where `first` points: look there directly
            oldest = next(iter(chunk.items()), None) if chunk else queue.front()
            if oldest is None or _EXPIRY.unpack_from(oldest[1])[0] > now:
                return
            self.remove(oldest[0], queue)

    def _evict(self, now: int) -> bool:
        victim: _Queue | None = None
        victim_key = ""
        best_rank = best_expiry = 0
        for queue in self._queues.values():
            oldest = queue.front()
            if oldest is None:
                continue
            key, entry = oldest
            expires = _expiry(entry)
            if expires <= now:
                rank = -1
            elif queue.rank is None:
                continue
            else:
                rank = queue.rank
            if victim is None or rank < best_rank or (rank == best_rank and expires < best_expiry):
                victim, victim_key, best_rank, best_expiry = queue, key, rank, expires
        if victim is None:
            return False
        self.remove(victim_key, victim)
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
        found = records.lookup(key)
        if found is not None:
            queue, record = found
            expires, flags, size = _RECORD.unpack_from(record)
            if expires > now:
                end = _RECORD.size + size
                stored = _unpack_fingerprint(flags, record[_RECORD.size : end])
                if flags & _DONE:
                    return Claim(False, stored, record[end:], 0)
                return Claim(False, stored, None, expires - now)
            records.remove(key, queue)
        flags, raw = _pack_fingerprint(fingerprint)
        entry = (
            _RECORD.pack(now + lease_ms, flags, len(raw))
            + raw
            + token.encode("utf-8", "surrogatepass")
        )
        if not records.add(key, 2 * lease_ms, None, entry, now):
            raise StoreCapacityError(
                f"the memory store holds {len(records)} requests in flight, its max_records; "
                "a new claim must wait until one of them finishes"
            )
        return Claim(True, fingerprint)

    def _held(self, key: str, token: str, now: int) -> tuple[_Queue, bytes, int, int] | None:
        """The queue, record, flags and fingerprint length of ``key`` while ``token``
        holds its lease."""
        records = self._records
        found = records.lookup(key)
        if found is None:
            return None
        queue, record = found
        expires, flags, size = _RECORD.unpack_from(record)
        if expires <= now:
            records.remove(key, queue)
            return None
        if flags & _DONE or record[_RECORD.size + size :] != token.encode("utf-8", "surrogatepass"):
            return None
        return queue, record, flags, size

    async def renew(self, key: str, token: str, *, lease_ms: int) -> bool:
        now = self._now()
        held = self._held(key, token, now)
        if held is None:
            return False
        queue, record, _, _ = held
        # never shorten: a renewal asking for less time than is left keeps the deadline
        expires = max(_expiry(record), now + lease_ms)
        entry = _EXPIRY.pack(expires) + record[_EXPIRY.size :]
        self._records.move(key, queue, 2 * lease_ms, None, entry, now)
        return True

    async def complete(self, key: str, token: str, response: bytes, *, ttl_ms: int) -> bool:
        now = self._now()
        held = self._held(key, token, now)
        if held is None:
            return False
        queue, record, flags, size = held
        # the token is not kept: only a lease in flight is fenced by it
        fingerprint = record[_RECORD.size : _RECORD.size + size]
        entry = _RECORD.pack(now + ttl_ms, flags | _DONE, size) + fingerprint + response
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
            found = buckets.lookup(one.key)
            state = None
            if found is not None:
                expires, a, b, c = _BUCKET.unpack(found[1])
                if expires > now:
                    state = (a, b, c)
                else:
                    buckets.remove(one.key, found[0])
            decision, state = decide(one, state, now)
            decisions.append(decision)
            states.append(state)
            allowed = allowed and decision.allowed
        if allowed:
            for one, state, decision in zip(hits, states, decisions, strict=True):
                rank = _OPEN if decision.remaining else _SPENT
                cls = (one.algorithm, one.window_ms, rank)
                packed = _BUCKET.pack(expires_at(one, state), *state)
                queue = buckets.find(one.key)  # again: two hits may share a key
                if queue is None:
                    buckets.add(one.key, cls, rank, packed, now)
                else:
                    buckets.move(one.key, queue, cls, rank, packed, now)
        return decisions

    # -- concurrency slots ------------------------------------------------------------------
    # One entry per key: its expiry, then each holder's deadline and token, expiring with its
    # last holder's lease. A key with a live holder is never evicted (rank None), like a lease
    # in flight: it guards running requests, and dropping it would admit one too many.

    def _holders(self, key: str, now: int) -> tuple[_Queue | None, dict[str, int]]:
        """The queue holding ``key`` and its live holders (a new dict, to change and `_keep`)."""
        slots = self._slots
        queue = slots.find(key)
        if queue is None:
            return None, {}
        entry = queue.get(key)
        assert entry is not None
        if _expiry(entry) <= now:
            slots.remove(key, queue)
            return None, {}
        holders: dict[str, int] = {}
        offset = _EXPIRY.size
        while offset < len(entry):
            until, size = _HOLDER.unpack_from(entry, offset)
            offset += _HOLDER.size
            if until > now:
                holders[entry[offset : offset + size].decode("utf-8", "surrogatepass")] = until
            offset += size
        return queue, holders

    def _keep(
        self, key: str, queue: _Queue | None, holders: dict[str, int], cls: Hashable, now: int
    ) -> bool:
        parts = [_EXPIRY.pack(max(holders.values()))]
        for token, until in holders.items():
            data = token.encode("utf-8", "surrogatepass")
            parts += (_HOLDER.pack(until, len(data)), data)
        entry = b"".join(parts)
        if queue is None:
            return self._slots.add(key, cls, None, entry, now)
        self._slots.move(key, queue, cls, None, entry, now)
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
                if not self._keep(key, queue, holders, ("slot", lease_ms), now):
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
            self._keep(key, queue, holders, ("slot", lease_ms), now)
        return held

    async def release_slots(self, keys: Sequence[str], token: str) -> None:
        now = self._now()
        for key in keys:
            queue, holders = self._holders(key, now)
            if holders.pop(token, None) is None or queue is None:
                continue
            if holders:
                self._keep(key, queue, holders, queue.cls, now)
            else:
                self._slots.remove(key, queue)
