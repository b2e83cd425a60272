"""What the rate limiter answers itself (429 when a tier refuses, 503 when the store failed
closed) and the check of what its store answered. One place for each, shared by the short
path, the gate and the featured path."""

from __future__ import annotations

from collections.abc import Sequence

from bastion._asgi import ANSWERED_SCOPE_KEY, send_problem
from bastion.exceptions import StoreError
from bastion.ratelimit._headers import RETRY_AFTER, LimitItem, rate_fields, seconds
from bastion.stores._protocols import RateLimitDecision
from bastion.typing import Scope, Send

__all__ = [
    "QUOTA_EXCEEDED",
    "Refusal",
    "all_allowed",
    "send_denied",
    "send_quota_exceeded",
    "send_unavailable",
]

QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"
"""The problem type the rate-limit headers draft registers for a 429."""

Refusal = tuple[str, bytes, int, RateLimitDecision]
"""A refusing tier: its name, `limit_prefix`, the quota it applied, and its decision."""


async def send_quota_exceeded(
    send: Send, names: list[str], retry_after: int, fields: list[tuple[bytes, bytes]]
) -> None:
    """The 429 problem naming the tiers that refused (``violated-policies``)."""
    await send_problem(
        send,
        429,
        "quota-exceeded",
        "Request cannot be satisfied as assigned quota has been exceeded",
        f"Quota exceeded for {', '.join(names)}; retry in {retry_after} seconds.",
        headers=fields,
        extra={"type": QUOTA_EXCEEDED, "violated-policies": names},
    )


async def send_denied(
    scope: Scope, send: Send, refused: Sequence[Refusal], policy: bytes | None, *, legacy: bool
) -> None:
    """429: ``Retry-After`` is the longest wait among the refusing tiers, never shorter than
    any of their ``t``, so a client that obeys it is not turned away again by them. ``policy``
    is the ``RateLimit-Policy`` value to send, None to send no rate-limit fields."""
    names: list[str] = []
    items: list[LimitItem] = []
    retry_after = 1
    for name, prefix, limit, decision in refused:
        wait = max(1, seconds(decision.retry_after_ms))
        retry_after = max(retry_after, wait)
        names.append(name)
        items.append((decision.remaining, wait, prefix, limit))
    scope[ANSWERED_SCOPE_KEY] = "ratelimit"
    fields = [(RETRY_AFTER, b"%d" % retry_after)]
    if policy is not None:
        fields += rate_fields(policy, items, legacy=legacy)
    await send_quota_exceeded(send, names, retry_after, fields)


async def send_unavailable(scope: Scope, send: Send, retry_after: bytes) -> None:
    """503: a tier that fails closed could not be decided, so the request was not run."""
    scope[ANSWERED_SCOPE_KEY] = "ratelimit"
    await send_problem(
        send,
        503,
        "rate-limit-store-unavailable",
        "Rate limit store unavailable",
        "The request was not run because its rate limits could not be checked.",
        headers=[(RETRY_AFTER, retry_after)],
    )


def all_allowed(decisions: object, count: int) -> bool:
    """Whether every decision allows the request; `StoreError` unless the store answered one
    `RateLimitDecision` of integers per hit, so that a store's bug gets the store-failure
    policy instead of a 500 (or a 429 built from a missing tier's numbers)."""
    if type(decisions) is not list and not isinstance(decisions, list | tuple):
        raise StoreError(f"the store answered hits with a {type(decisions).__name__}")
    if len(decisions) != count:
        raise StoreError(f"the store answered {len(decisions)} decisions to {count} hits")
    allowed = True
    for decision in decisions:
        if type(decision) is not RateLimitDecision and not isinstance(decision, RateLimitDecision):
            raise StoreError(f"the store answered a hit with a {type(decision).__name__}")
        ok, _, remaining, reset_ms, retry_after_ms = decision
        if type(ok) is not bool or not (
            (type(remaining) is int and type(reset_ms) is int and type(retry_after_ms) is int)
            or (
                isinstance(remaining, int)
                and isinstance(reset_ms, int)
                and isinstance(retry_after_ms, int)
            )
        ):
            raise StoreError("the store answered a hit with a malformed RateLimitDecision")
        if not ok:
            allowed = False
    return allowed
