"""An in-process store: bounded, O(1) per operation, for tests and single-process services.

Atomicity comes from the event loop: no primitive awaits between reading and writing, so
concurrent tasks of one process can never interleave inside one. It is not shared between
processes or threads; use the Redis or SQL store for that.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Generic, TypeVar

from bastion._core.algorithms import State, decide, expires_at
from bastion.exceptions import ConfigurationError
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
_EVICTION_PROBES = 8

V = TypeVar("V")


class _Entry(Generic[V]):
    __slots__ = ("expires_at", "value")

    def __init__(self, value: V, expires_at: int) -> None:
        self.value = value
        self.expires_at = expires_at


class _ExpiringMap(Generic[V]):
    """A bounded map whose entries expire; every operation is amortised O(1).

    Entries are kept in the order they were last written, which is close to expiry order, so
    expired entries gather at the front and are swept from there on each write. When full,
    the least recently written entry goes first, unless ``pinned`` says to keep it.
    """

    __slots__ = ("_data", "_max")

    def __init__(self, max_size: int) -> None:
        self._data: OrderedDict[str, _Entry[V]] = OrderedDict()
        self._max = max_size

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str, now: int) -> V | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry.expires_at <= now:
            del self._data[key]
            return None
        return entry.value

    def expiry(self, key: str) -> int:
        return self._data[key].expires_at

    def put(self, key: str, value: V, expires_at: int, now: int) -> None:
        entry = self._data.get(key)
        if entry is None:
            self.insert(key, value, expires_at, now)
        else:
            entry.value = value
            self.touch(key, expires_at)

    def insert(self, key: str, value: V, expires_at: int, now: int) -> None:
        """Add a key known to be absent (``get`` just said so)."""
        data = self._data
        self._sweep(now)
        if len(data) >= self._max:
            self._evict(now)
        data[key] = _Entry(value, expires_at)

    def touch(self, key: str, expires_at: int) -> None:
        """Give a present key a new expiry, and a place at the back as just written."""
        self._data[key].expires_at = expires_at
        self._data.move_to_end(key)

    def delete(self, key: str) -> None:
        self._data.pop(key, None)

    def _sweep(self, now: int) -> None:
        data = self._data
        for _ in range(2):
            if not data:
                return
            key, entry = next(iter(data.items()))
            if entry.expires_at > now:
                return
            del data[key]

    def _evict(self, now: int) -> None:
        data = self._data
        for _ in range(_EVICTION_PROBES):
            key, entry = data.popitem(last=False)
            if entry.expires_at <= now or not self.pinned(entry.value):
                return
            data[key] = entry  # still needed: give it another turn at the back
        data.popitem(last=False)

    def pinned(self, value: V) -> bool:
        return False


class _Record:
    __slots__ = ("fingerprint", "response", "token")

    def __init__(self, fingerprint: str, token: str, response: bytes | None = None) -> None:
        self.fingerprint = fingerprint
        self.token = token
        self.response = response


class _RecordMap(_ExpiringMap[_Record]):
    __slots__ = ()

    def pinned(self, value: _Record) -> bool:
        # an in-flight lease guards a running handler: evicting it would let a duplicate run
        return value.response is None


class _SlotMap(_ExpiringMap[dict[str, int]]):
    """Per key, the live holders' tokens and deadlines; a key expires with its last lease."""

    __slots__ = ()

    def pinned(self, value: dict[str, int]) -> bool:
        # a held slot guards a running request: evicting it would admit one too many
        return bool(value)


class MemoryStore:
    """Idempotency records and rate-limit buckets in this process's memory.

    ``max_records`` and ``max_buckets`` bound memory: expired entries are freed first, then the
    least recently written. ``clock`` returns seconds and is injectable so tests never sleep.
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
        self._records = _RecordMap(max_records)
        self._buckets: _ExpiringMap[State] = _ExpiringMap(max_buckets)
        self._clock = clock

    def _now(self) -> int:
        return int(self._clock() * 1000)

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    # -- idempotency ------------------------------------------------------------------------

    async def claim(self, key: str, fingerprint: str, token: str, *, lease_ms: int) -> Claim:
        now = self._now()
        record = self._records.get(key, now)
        if record is not None:
            remaining = self._records.expiry(key) - now if record.response is None else 0
            return Claim(False, record.fingerprint, record.response, remaining)
        self._records.insert(key, _Record(fingerprint, token), now + lease_ms, now)
        return Claim(True, fingerprint)

    def _held(self, key: str, token: str, now: int) -> _Record | None:
        record = self._records.get(key, now)
        if record is None or record.token != token or record.response is not None:
            return None
        return record

    async def renew(self, key: str, token: str, *, lease_ms: int) -> bool:
        now = self._now()
        record = self._held(key, token, now)
        if record is None:
            return False
        self._records.touch(key, now + lease_ms)
        return True

    async def complete(self, key: str, token: str, response: bytes, *, ttl_ms: int) -> bool:
        now = self._now()
        record = self._held(key, token, now)
        if record is None:
            return False
        record.response = response
        self._records.touch(key, now + ttl_ms)
        return True

    async def release(self, key: str, token: str) -> bool:
        if self._held(key, token, self._now()) is None:
            return False
        self._records.delete(key)
        return True

    # -- rate limits ------------------------------------------------------------------------

    async def hit(self, hits: Sequence[RateLimitHit]) -> list[RateLimitDecision]:
        now = self._now()
        buckets = self._buckets
        decisions: list[RateLimitDecision] = []
        states: list[State] = []
        allowed = True
        for one in hits:
            decision, state = decide(one, buckets.get(one.key, now), now)
            decisions.append(decision)
            states.append(state)
            allowed = allowed and decision.allowed
        if allowed:
            for one, state in zip(hits, states, strict=True):
                buckets.put(one.key, state, expires_at(one, state), now)
        return decisions

    # -- concurrency slots ------------------------------------------------------------------

    def _slot_map(self) -> _SlotMap:
        slots: _SlotMap | None = self.__dict__.get("_slots")
        if slots is None:
            slots = self.__dict__["_slots"] = _SlotMap(DEFAULT_MAX_BUCKETS)
        return slots

    def _holders(self, key: str, now: int) -> dict[str, int]:
        holders = self._slot_map().get(key, now)
        if holders is None:
            return {}
        for token in [t for t, until in holders.items() if until <= now]:
            del holders[token]
        return holders

    async def acquire_slots(
        self, slots: Sequence[SlotRequest], token: str, *, lease_ms: int
    ) -> list[SlotDecision]:
        now = self._now()
        found = [self._holders(key, now) for key, _ in slots]
        acquired = all(
            len(h) < limit or token in h for h, (_, limit) in zip(found, slots, strict=True)
        )
        decisions: list[SlotDecision] = []
        for holders, (key, limit) in zip(found, slots, strict=True):
            if acquired:
                holders[token] = now + lease_ms
                self._slot_map().put(key, holders, max(holders.values()), now)
            decisions.append(SlotDecision(acquired, limit, len(holders)))
        return decisions

    async def renew_slots(self, keys: Sequence[str], token: str, *, lease_ms: int) -> bool:
        now = self._now()
        held = True
        for key in keys:
            holders = self._holders(key, now)
            if token not in holders:
                held = False
                continue
            holders[token] = now + lease_ms
            self._slot_map().touch(key, max(holders.values()))
        return held

    async def release_slots(self, keys: Sequence[str], token: str) -> None:
        now = self._now()
        for key in keys:
            holders = self._holders(key, now)
            if holders.pop(token, None) is not None and not holders:
                self._slot_map().delete(key)
