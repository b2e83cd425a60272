"""An in-process store: bounded, O(1) per operation, for tests and single-process services.

Atomicity comes from the event loop: no primitive awaits between reading and writing, so
concurrent tasks of one process can never interleave inside one. It is not shared between
processes or threads; use the Redis or SQL store for that.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Hashable, Sequence

from bastion._core.algorithms import State, decide, expires_at
from bastion.exceptions import ConfigurationError, StoreCapacityError
from bastion.stores._expiring import EXPIRY, ExpiringMap, Queue, expiry
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

# An entry is bytes that start with its expiry (ms, signed 64-bit big-endian). A record is
# `_RECORD` (expiry, flags, fingerprint length), the fingerprint, then the lease's token while
# in flight or the stored response once completed; a bucket is `_BUCKET` (expiry, *state); a
# key's concurrency slots are the expiry then each holder's deadline and token. Neither bytes
# nor the plain dicts of `_expiring` holding them are tracked by the cyclic GC, so a million
# records add nothing to a collection's pause, and none survive into the old generation to
# trigger full collections. (Tuples would be tracked until a collection looked at them, and a
# dict is tracked from the first tracked value put in it.)
_RECORD = struct.Struct(">qBI")
_BUCKET = struct.Struct(">qqqq")
_HOLDER = struct.Struct(">qH")
_DONE = 1  # record flag: a stored response follows the fingerprint, not a token
_RAW = 2  # record flag: the fingerprint was lower-case hex, kept as the bytes it spells

_OPEN = 0
_SPENT = 1
_new_tuple = tuple.__new__


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
        self._records = ExpiringMap(max_records, indexed=False)
        self._buckets = ExpiringMap(max_buckets, indexed=True)
        self._slots = ExpiringMap(max_buckets, indexed=True)
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
        now = int(self._clock() * 1000)  # `_now`, inline on the paths every request takes
        if now > self._last:
            self._last = now
        else:
            now = self._last
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
        # Claim(True, fingerprint), built without the named tuple's Python-level __new__
        return _new_tuple(Claim, (True, fingerprint, None, 0))

    def _held(self, key: str, token: str, now: int) -> tuple[Queue, bytes, int, int] | None:
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
        expires = max(expiry(record), now + lease_ms)
        entry = EXPIRY.pack(expires) + record[EXPIRY.size :]
        self._records.move(key, queue, 2 * lease_ms, None, entry, now)
        return True

    async def complete(self, key: str, token: str, response: bytes, *, ttl_ms: int) -> bool:
        now = int(self._clock() * 1000)
        if now > self._last:
            self._last = now
        else:
            now = self._last
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
        now = int(self._clock() * 1000)
        if now > self._last:
            self._last = now
        else:
            now = self._last
        buckets = self._buckets
        decisions: list[RateLimitDecision] = []
        states: list[State] = []
        queues: list[Queue | None] = []
        allowed = True
        for one in hits:
            found = buckets.lookup(one.key)
            state = None
            queue = None
            if found is not None:
                queue, entry = found
                expires, a, b, c = _BUCKET.unpack(entry)
                if expires > now:
                    state = (a, b, c)
                else:
                    buckets.remove(one.key, queue)
                    queue = None
            decision, state = decide(one, state, now)
            decisions.append(decision)
            states.append(state)
            queues.append(queue)
            allowed = allowed and decision[0]
        if allowed:
            for one, state, decision, queue in zip(hits, states, decisions, queues, strict=True):
                rank = _OPEN if decision[2] else _SPENT
                cls = (one.algorithm, one.window_ms, rank)
                packed = _BUCKET.pack(expires_at(one, state), *state)
                if queue is None or one.key not in queue.where:
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

    def _holders(self, key: str, now: int) -> tuple[Queue | None, dict[str, int]]:
        """The queue holding ``key`` and its live holders (a new dict, to change and `_keep`)."""
        slots = self._slots
        queue = slots.find(key)
        if queue is None:
            return None, {}
        entry = queue.get(key)
        assert entry is not None
        if expiry(entry) <= now:
            slots.remove(key, queue)
            return None, {}
        holders: dict[str, int] = {}
        offset = EXPIRY.size
        while offset < len(entry):
            until, size = _HOLDER.unpack_from(entry, offset)
            offset += _HOLDER.size
            if until > now:
                holders[entry[offset : offset + size].decode("utf-8", "surrogatepass")] = until
            offset += size
        return queue, holders

    def _keep(
        self, key: str, queue: Queue | None, holders: dict[str, int], cls: Hashable, now: int
    ) -> bool:
        parts = [EXPIRY.pack(max(holders.values()))]
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
