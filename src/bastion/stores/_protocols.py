"""What a store must do: a few atomic primitives, no policy.

The middleware own the semantics (fingerprints, leases, replay rules, rate-limit tiers); a store
only persists and makes each primitive atomic. Times are integer milliseconds throughout so the
same numbers reach Lua scripts and SQL columns unchanged. Every method raises `StoreError`
(from `bastion.exceptions`) for backend failures and nothing else. The middleware do not rely
on it: whatever a store raises (short of cancellation), and any answer that is not the type
its method promises, is a store failure, answered by the fail-open or fail-closed policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, runtime_checkable

from bastion._core.slots import SlotDecision, SlotRequest
from bastion._core.types import Algorithm, Claim, RateLimitDecision, RateLimitHit

__all__ = [
    "Algorithm",
    "Claim",
    "ClaimHitStore",
    "ConcurrencyStore",
    "IdempotencyStore",
    "RateLimitDecision",
    "RateLimitHit",
    "RateLimitStore",
    "SlotDecision",
    "SlotRequest",
    "Store",
    "TierValidatingStore",
    "TransactionalIdempotencyStore",
    "claim_then_hit",
]


@runtime_checkable
class Store(Protocol):
    """What every store offers besides its primitives.

    A store may also set ``suspends = False`` (a class attribute, not part of the protocol)
    when none of its primitives ever awaits, as `MemoryStore`'s do: the idempotency middleware
    then skips shielding its claims from cancellation, which could not interrupt them anyway.
    Any other store is assumed to suspend.
    """

    backend: str
    """A short backend name (``memory``, ``redis``, ``sql``) for metrics and logs."""

    async def ping(self) -> None:
        """Raise `StoreError` unless the backend answers; used by readiness probes."""

    async def aclose(self) -> None:
        """Release connections the store opened itself."""


@runtime_checkable
class IdempotencyStore(Store, Protocol):
    """Idempotency records: an in-flight lease that becomes a stored response.

    A record holds a fingerprint, a fencing token, and either a lease deadline (in flight) or a
    stored response (complete). Tokens are opaque strings chosen by the caller, unique to each
    claim; a store only compares them. The middleware's are 96 random bits drawn per process
    (again in every forked worker) followed by a count of the process's claims: unique without
    a random draw per request, and never secret, since a token guards against stale writers,
    not attackers.
    """

    async def claim(self, key: str, fingerprint: str, token: str, *, lease_ms: int) -> Claim:
        """Atomically take ``key`` for ``lease_ms`` with ``token`` if it is free.

        The key is free when no record exists, the record expired, or its in-flight lease
        ran out (its holder is presumed dead). Otherwise the existing record is returned.
        """

    async def renew(self, key: str, token: str, *, lease_ms: int) -> bool:
        """Extend the lease to ``lease_ms`` from now if ``token`` still holds it, never
        bringing its deadline forward (a caller whose clock is behind must not shorten it);
        False when it was lost."""

    async def complete(self, key: str, token: str, response: bytes, *, ttl_ms: int) -> bool:
        """Store the response if ``token`` still holds the lease (fencing); False otherwise.

        The very response sent again by the token that stored it, while the record lives, may
        answer True: a store that resends after a broken connection (Redis) cannot tell its
        two sends apart. Any other token or response is refused."""

    async def release(self, key: str, token: str) -> bool:
        """Delete the in-flight record if ``token`` still holds it, so a retry runs again."""


@runtime_checkable
class TransactionalIdempotencyStore(IdempotencyStore, Protocol):
    """An idempotency store whose database can also hold the handler's own rows (SQLStore).

    `bastion.idempotency.transaction` writes a handler's rows and its stored response in one
    transaction through these two primitives, so both commit or neither does. The caller
    commits or rolls back; the store only opens the connection and writes, fenced.
    """

    def connect_transaction(self) -> AbstractAsyncContextManager[Any]:
        """One of the store's connections in a transaction begun with the store's own set-up
        (SQLite: holding the write lock), given back when the block ends. The caller commits
        or rolls it back; failing to open it raises `StoreError`."""

    async def complete_in(
        self, connection: Any, key: str, token: str, response: bytes, *, ttl_ms: int
    ) -> bool:
        """`complete` as a statement of ``connection``'s open transaction, left uncommitted:
        False when ``token`` no longer holds the lease."""


@runtime_checkable
class RateLimitStore(Store, Protocol):
    """Rate-limit buckets, decided all together."""

    async def hit(self, hits: Sequence[RateLimitHit]) -> list[RateLimitDecision]:
        """Decide every hit in one atomic step: all-or-nothing.

        Each decision follows `bastion._core.algorithms`. When any hit is denied, no bucket
        is charged, so a denied request consumes nothing from the tiers that allowed it.

        A bucket named by several hits is decided for each of them against its state before
        the call, and keeps the state of its last hit: a count-on-response tier sends its
        cost (to be refused when it no longer fits) followed by a cost of 0, so that an
        allowed request is decided in the same step without being charged.
        """


@runtime_checkable
class ClaimHitStore(IdempotencyStore, RateLimitStore, Protocol):
    """A store that claims a key and charges the request's rate-limit tiers in one atomic step.

    A rate limiter outside the idempotency layer charges a keyed request only once its claim
    shows it fresh (`bastion.idempotency._quota`): two steps, two round trips on a networked
    store. When both middleware share a store whose ``claims_with_hits`` is True, they make
    the one call below instead. A store sets it False where it cannot make it one step
    (`RedisStore` on a cluster, whose record and buckets live in different slots; `SQLStore`
    but on PostgreSQL). A store without round trips to save (`MemoryStore`) need not offer it.
    """

    @property
    def claims_with_hits(self) -> bool:
        """Whether `claim_and_hit` is one atomic step here; the middleware use it only then."""

    async def claim_and_hit(
        self, key: str, fingerprint: str, token: str, hits: Sequence[RateLimitHit], *, lease_ms: int
    ) -> tuple[Claim, list[RateLimitDecision]]:
        """`claim`, then, only when the claim was taken, `hit` with ``hits``, as one step.

        The decisions are empty when the claim was not taken: nothing was charged. A denied
        hit leaves the claim taken, as the two calls would; the caller releases it. The step
        is atomic where the store can make it so (Redis: one script); where it cannot in a
        rare case (PostgreSQL taking over a lapsed lease), it is the two calls in order.
        """


async def claim_then_hit(
    store: Any,
    key: str,
    fingerprint: str,
    token: str,
    hits: Sequence[RateLimitHit],
    *,
    lease_ms: int,
) -> tuple[Claim, list[RateLimitDecision]]:
    """`ClaimHitStore.claim_and_hit` as the two calls it stands for, in order: what a store
    falls back to where it cannot make them one step."""
    claim: Claim = await store.claim(key, fingerprint, token, lease_ms=lease_ms)
    return claim, await store.hit(hits) if claim.acquired else []


@runtime_checkable
class TierValidatingStore(Protocol):
    """A store that cannot decide every tier exactly says so before the first request.

    `RateLimitMiddleware` calls `validate_hit` once per tier when it is built, so a tier the
    backend cannot handle (Redis: one whose numbers leave Lua's exact-integer range) is a
    `ConfigurationError` at start-up rather than a store error on every request that hits it.
    """

    def validate_hit(self, hit: RateLimitHit) -> None:
        """Raise `ConfigurationError` when this store cannot decide ``hit`` exactly."""


@runtime_checkable
class ConcurrencyStore(Store, Protocol):
    """Concurrency slots: at most ``limit`` live leases per key, shared by every process.

    A request holds one lease per concurrency tier under a token of its own (opaque, unique
    per request); every primitive is atomic across the keys it is given. A lease whose
    deadline has passed is no longer counted, so a holder that died frees its slot by itself.
    """

    async def acquire_slots(
        self, slots: Sequence[SlotRequest], token: str, *, lease_ms: int
    ) -> list[SlotDecision]:
        """Take a slot of every key for ``token`` for ``lease_ms``, all or none.

        A key has a free slot when fewer than its ``limit`` live leases hold it. When any key
        has none, no slot is taken; each decision still says how many hold its key.
        """

    async def renew_slots(self, keys: Sequence[str], token: str, *, lease_ms: int) -> bool:
        """Extend ``token``'s live leases on ``keys``; False when any of them was lost."""

    async def release_slots(self, keys: Sequence[str], token: str) -> None:
        """Give ``token``'s slots on ``keys`` back; releasing one not held is not an error."""
