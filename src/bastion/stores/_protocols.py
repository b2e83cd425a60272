"""What a store must do: a few atomic primitives, no policy.

The middleware own the semantics (fingerprints, leases, replay rules, rate-limit tiers); a store
only persists and makes each primitive atomic. Times are integer milliseconds throughout so the
same numbers reach Lua scripts and SQL columns unchanged. Every method raises `StoreError`
(from `bastion.exceptions`) for backend failures and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol, runtime_checkable

__all__ = [
    "Algorithm",
    "Claim",
    "IdempotencyStore",
    "RateLimitDecision",
    "RateLimitHit",
    "RateLimitStore",
    "Store",
    "TierValidatingStore",
]

Algorithm = Literal["fixed_window", "sliding_window", "gcra"]


class Claim(NamedTuple):
    """The outcome of `IdempotencyStore.claim`.

    ``acquired`` is true when the caller now holds the key's lease with its own token. Otherwise
    the other fields describe the record holding the key: its fingerprint, its stored response
    (None while it is still in flight) and how long its lease has left.
    """

    acquired: bool
    fingerprint: str
    response: bytes | None = None
    lease_remaining_ms: int = 0


@runtime_checkable
class Store(Protocol):
    """What every store offers besides its primitives."""

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
    stored response (complete). Tokens are opaque strings chosen by the caller, fresh for every
    claim (the middleware draws 128 random bits); a store only compares them.
    """

    async def claim(self, key: str, fingerprint: str, token: str, *, lease_ms: int) -> Claim:
        """Atomically take ``key`` for ``lease_ms`` with ``token`` if it is free.

        The key is free when no record exists, the record expired, or its in-flight lease
        ran out (its holder is presumed dead). Otherwise the existing record is returned.
        """

    async def renew(self, key: str, token: str, *, lease_ms: int) -> bool:
        """Extend the lease if ``token`` still holds it; False when it was lost."""

    async def complete(self, key: str, token: str, response: bytes, *, ttl_ms: int) -> bool:
        """Store the response if ``token`` still holds the lease (fencing); False otherwise."""

    async def release(self, key: str, token: str) -> bool:
        """Delete the in-flight record if ``token`` still holds it, so a retry runs again."""


@dataclass(frozen=True, slots=True)
class RateLimitHit:
    """One tier's share of a request: which bucket, which algorithm, which quota."""

    key: str
    algorithm: Algorithm
    limit: int
    window_ms: int
    cost: int = 1


class RateLimitDecision(NamedTuple):
    """One tier's answer. ``reset_ms`` is the time until more quota is available (one more unit
    than ``remaining``; 0 when the quota is whole), the ``t`` of the IETF ``RateLimit`` field
    (draft -10 on).

    Answers (this and `Claim`) are named tuples: one is built per tier per request, and a
    tuple costs less than half as much to build as a frozen dataclass."""

    allowed: bool
    limit: int
    remaining: int
    reset_ms: int
    retry_after_ms: int = 0


@runtime_checkable
class RateLimitStore(Store, Protocol):
    """Rate-limit buckets, decided all together."""

    async def hit(self, hits: Sequence[RateLimitHit]) -> list[RateLimitDecision]:
        """Decide every hit in one atomic step: all-or-nothing.

        Each decision follows `bastion.ratelimit.algorithms`. When any hit is denied, no bucket
        is charged, so a denied request consumes nothing from the tiers that allowed it.
        """


@runtime_checkable
class TierValidatingStore(Protocol):
    """A store that cannot decide every tier exactly says so before the first request.

    `RateLimitMiddleware` calls `validate_hit` once per tier when it is built, so a tier the
    backend cannot handle (Redis: one whose numbers leave Lua's exact-integer range) is a
    `ConfigurationError` at start-up rather than a store error on every request that hits it.
    """

    def validate_hit(self, hit: RateLimitHit) -> None:
        """Raise `ConfigurationError` when this store cannot decide ``hit`` exactly."""
