"""Concurrency slots: how many requests of a key may be in flight at once.

A slot is a lease: a holder's token with a deadline. A holder renews it while its request
runs and releases it when the request ends; a holder that dies stops renewing, and its slot
frees itself when the deadline passes. Stores keep the leases; these values are what they
exchange with the middleware.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SlotDecision", "SlotRequest"]


class SlotRequest(NamedTuple):
    """One concurrency tier's share of a request: the key, and how many may hold it."""

    key: str
    limit: int


class SlotDecision(NamedTuple):
    """One tier's answer to `ConcurrencyStore.acquire_slots`.

    ``in_flight`` counts the live holders of the key after the call, the caller included when
    ``acquired``; ``limit - in_flight`` is the ``r`` of the ``RateLimit`` field.
    """

    acquired: bool
    limit: int
    in_flight: int
