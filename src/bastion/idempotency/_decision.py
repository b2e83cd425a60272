"""The idempotency state machine, as pure functions of the store's answers and the settings.

The middleware does the I/O (claim, poll, send, store) and asks these functions what each
answer means, so that every rule of docs/idempotency.md lives in one place that can be tested
case by case without a store, a clock or an event loop. They run on every keyed request:
the common answers are decided in a comparison or two, and answers without a payload are
shared constants, never built afresh.
"""

from __future__ import annotations

import enum
import math
from typing import Final, NamedTuple

from bastion._core.records import StoredResponse
from bastion._core.types import Claim
from bastion.idempotency._settings import IdempotencySettings

__all__ = [
    "COMPLETED",
    "MISMATCH",
    "RELEASE",
    "RUN",
    "RUN_UNPROTECTED",
    "STORE",
    "UNAVAILABLE",
    "UNREADABLE",
    "Conflict",
    "Decision",
    "Ending",
    "Verdict",
    "decide",
    "ending",
    "pending",
    "retry_after",
    "store_failed",
    "waits",
]


class Verdict(enum.Enum):
    """An answer that needs nothing but its name."""

    RUN = "run"
    """This request holds the key: run the handler."""
    MISMATCH = "payload_mismatch"
    """The key belongs to a different request: 422, never run."""
    UNREADABLE = "record_unreadable"
    """The request ran, but its stored response cannot be read here: 503, never run again."""
    RUN_UNPROTECTED = "run_unprotected"
    """The store failed and ``fail_open`` is set: run without protection."""
    UNAVAILABLE = "store_unavailable"
    """The store failed and ``fail_open`` is not set: 503, not run."""


class Conflict(NamedTuple):
    """The key's first request is still running: 409, with ``Retry-After`` in seconds."""

    retry_after: int


Decision = Verdict | StoredResponse | Conflict
"""A `Verdict`, a `Conflict`, or the `StoredResponse` to replay (the request already ran with
this key: send its response back), which is its own decision rather than wrapped in one."""


class Ending(enum.Enum):
    """What a request that ran leaves in the store."""

    COMPLETED = "completed"
    """The handler stored its response in its own transaction: nothing left to write."""
    STORE = "store"
    """The captured response is kept: complete the key with it."""
    RELEASE = "release"
    """Nothing storable (an error status, an unfinished or oversized response): release the
    key so that a retry runs again."""


# Looking a member up on an Enum class costs as much as the rest of a decision (Python
# 3.11), so the hot path names them through these module constants.
RUN: Final = Verdict.RUN
MISMATCH: Final = Verdict.MISMATCH
UNREADABLE: Final = Verdict.UNREADABLE
RUN_UNPROTECTED: Final = Verdict.RUN_UNPROTECTED
UNAVAILABLE: Final = Verdict.UNAVAILABLE
COMPLETED: Final = Ending.COMPLETED
STORE: Final = Ending.STORE
RELEASE: Final = Ending.RELEASE


def waits(claim: Claim, fingerprint: str, settings: IdempotencySettings) -> bool:
    """Whether this request should wait for the key's first request instead of a 409: only a
    true duplicate of a request still in flight, and only with ``settings.wait``. A reused
    key with another request gets its 422 at once."""
    return (
        settings.wait
        and not claim.acquired
        and claim.response is None
        and claim.fingerprint == fingerprint
    )


def pending(claim: Claim) -> bool:
    """Whether a waiting request polls again: nobody has stored a response yet and the key is
    still held, by the first request or by whoever took it since."""
    return not claim.acquired and claim.response is None


def decide(claim: Claim, fingerprint: str, settings: IdempotencySettings) -> Decision:
    """What the store's answer to this request's claim means, once any waiting is over.

    The fingerprint is compared before the stored response is read, so a key reused for
    another request gets its 422 even when the record is unreadable here."""
    if claim.acquired:
        return RUN
    if claim.fingerprint != fingerprint:
        return MISMATCH
    if claim.response is None:
        return Conflict(retry_after(claim.lease_remaining_ms, settings))
    try:
        return StoredResponse.decode(claim.response)
    except ValueError:
        return UNREADABLE


def retry_after(lease_remaining_ms: int, settings: IdempotencySettings) -> int:
    """``Retry-After`` seconds for a 409: the earliest a retry can get another answer, as far
    as the holder's remaining lease tells.

    A live holder renews its lease a third of the way through at the latest (renewals start
    one or two thirds in, then every third), so a remaining lease above a third means it may
    still be running and may finish any moment: the short hint, never more than the lease.
    At or below a third it has missed its renewal (its worker died, or cannot reach the
    store) and the key stays taken until the lease runs out: retrying earlier only gets
    another 409, so the wait is the rest of the lease."""
    remaining = math.ceil(lease_remaining_ms / 1000)
    if lease_remaining_ms * 3 > settings.lease_seconds * 1000:
        remaining = min(settings.conflict_retry_after_seconds, remaining)
    return max(1, remaining)


def store_failed(settings: IdempotencySettings) -> Verdict:
    """The answer when the store cannot guarantee this request (it raised, or answered
    something that is not a `Claim`, on the claim or while waiting)."""
    return RUN_UNPROTECTED if settings.fail_open else UNAVAILABLE


def ending(
    completed: bool,
    status: int,
    complete: bool,
    overflow: bool,
    settings: IdempotencySettings,
) -> Ending:
    """What to do with the key once the handler is done, from what was sent: ``status`` and
    whether the response was ``complete`` or outgrew the capture (``overflow``)."""
    if completed:
        return COMPLETED
    if complete and not overflow and settings.keeps(status):
        return STORE
    return RELEASE
