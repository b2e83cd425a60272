"""The answers and requests that stores, algorithms and middleware pass each other.

Plain values with no behaviour, below every feature: the rate-limit algorithms, the stores and
the middleware all speak them, so none of them has to import another to share a type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

__all__ = ["Algorithm", "Claim", "RateLimitDecision", "RateLimitHit"]

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
