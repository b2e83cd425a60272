"""Bounded maps of expiring entries, for `MemoryStore`: expiry order in O(1) amortised.

An entry is bytes that start with its expiry (ms, signed 64-bit big-endian). Bytes are never
tracked by the cyclic GC, and neither is a plain dict holding only strings, ints and bytes: the
chunks and indexes here stay invisible to it however many entries they hold.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Hashable

__all__ = ["EXPIRY", "ExpiringMap", "Queue", "expiry"]

EXPIRY = struct.Struct(">q")
_SWEEP = 2
_IDLE_QUEUES = 16
_CHUNK = 32
"""Entries per chunk of a queue: the most ``next(iter(chunk))`` skips over to find the front."""


def expiry(entry: bytes) -> int:
    expires: int = EXPIRY.unpack_from(entry)[0]
    return expires


class Queue:
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


class ExpiringMap:
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
        self._queues: dict[Hashable, Queue] = {}
        self._numbered: dict[int, Queue] = {}
        self._numbers = itertools.count()
        self._max = max_size
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def find(self, key: str) -> Queue | None:
        """The queue holding ``key``, expired or not."""
        if self._where is not None:
            number = self._where.get(key)
            return None if number is None else self._numbered[number]
        for queue in self._queues.values():
            if key in queue.where:
                return queue
        return None

    def lookup(self, key: str) -> tuple[Queue, bytes] | None:
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

    def remove(self, key: str, queue: Queue) -> None:
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
        self, key: str, old: Queue, cls: Hashable, rank: int | None, entry: bytes, now: int
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

    def _queue(self, cls: Hashable, rank: int | None) -> Queue:
        queue = self._queues[cls] = Queue(cls, rank, next(self._numbers))
        self._numbered[queue.number] = queue
        if len(self._queues) > _IDLE_QUEUES:
            for idle in [q for q in self._queues.values() if not q.where]:
                del self._queues[idle.cls]
                del self._numbered[idle.number]
            self._queues[cls] = queue
            self._numbered[queue.number] = queue
        return queue

    def _sweep(self, queue: Queue, now: int) -> None:
        for _ in range(_SWEEP):
            chunk = queue.chunks.get(queue.first)
            # the front chunk is nearly always where `first` points: look there directly
            oldest = next(iter(chunk.items()), None) if chunk else queue.front()
            if oldest is None or EXPIRY.unpack_from(oldest[1])[0] > now:
                return
            self.remove(oldest[0], queue)

    def _evict(self, now: int) -> bool:
        victim: Queue | None = None
        victim_key = ""
        best_rank = best_expiry = 0
        for queue in self._queues.values():
            oldest = queue.front()
            if oldest is None:
                continue
            key, entry = oldest
            expires = expiry(entry)
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
