"""Observations that go straight to prometheus_client's values, bound once per label set.

The public ``inc`` and ``observe`` re-check on every call what binding checked once, scan a
histogram's buckets one by one, and take a lock per value: a request's seven observations took
seven locks. Where the installed prometheus_client keeps each value as this version expects (a
`MutexValue` holding a float, as in single-process mode), a request's observations are written
under one lock of bastion's own, shared by every middleware writing these metrics; anywhere
else (multiprocess mode, another version) they go through the public methods.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bastion.metrics._prometheus import HttpMetrics

__all__ = ["Children", "Record", "direct_record", "incrementer", "observer"]

Record = Callable[[float, float, float], None]
"""Records one request that has ended: its request and response body sizes and its duration."""

_WRITES = threading.Lock()
"""Held while bastion writes to metric values directly: the values' own locks are not taken,
so every direct writer takes this one (readers read single floats, as before)."""


class Children:
    """The metric children of one (method, route, status), bound once instead of per request.

    Each observation goes straight to the child's values (`observer`, `incrementer`): the
    public ``observe`` and ``inc`` re-check on every call what binding checked once, and scan
    the buckets one by one; this costs a third of the instructions for the same samples.
    """

    __slots__ = (
        "duration",
        "observe_duration",
        "observe_request",
        "observe_response",
        "record",
        "requests",
    )

    def __init__(self, metrics: HttpMetrics, method: str, route: str, status: int) -> None:
        requests = metrics.requests.labels(method, route, str(status))
        in_flight = metrics.in_flight.labels(method)
        request_size = metrics.request_size.labels(method, route)
        response_size = metrics.response_size.labels(method, route)
        self.requests = incrementer(requests)
        self.duration = metrics.duration.labels(method, route)
        self.observe_duration = observer(self.duration)
        self.observe_request = observer(request_size)
        self.observe_response = observer(response_size)
        # all of one request's observations at once (None: they go one by one, above)
        self.record = direct_record(requests, request_size, response_size, self.duration, in_flight)


def incrementer(child: Any) -> Callable[[float], None]:
    """``child.inc`` for a counter or gauge child, without the per-call checks when the
    installed prometheus_client keeps its value where this version expects it."""
    value = getattr(child, "_value", None)
    inc = getattr(value, "inc", None)
    return inc if callable(inc) else child.inc  # type: ignore[no-any-return]


def observer(child: Any) -> Callable[[float], None]:
    """``child.observe`` for a histogram child: the sum, then the first bucket whose upper
    bound is at least the amount (what ``observe`` finds by scanning), found by bisection."""
    total = getattr(child, "_sum", None)
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    if (
        not callable(getattr(total, "inc", None))
        or not isinstance(bounds, list)
        or not isinstance(buckets, list)
        or len(bounds) != len(buckets)
        or not bounds
        or bounds[-1] != float("inf")
    ):
        return child.observe  # type: ignore[no-any-return]
    add = total.inc  # type: ignore[union-attr]
    incs = [bucket.inc for bucket in buckets]
    frozen = tuple(bounds)

    def observe(amount: float) -> None:
        add(amount)
        incs[bisect_left(frozen, amount)](1)

    return observe


def _plain(value: Any) -> bool:
    """Whether ``value`` is prometheus_client's single-process value: a float in ``_value``."""
    from prometheus_client.values import MutexValue

    return type(value) is MutexValue and type(value._value) is float


def _histogram(child: Any) -> tuple[tuple[float, ...], Any, list[Any]] | None:
    """A histogram child's bounds, sum and buckets, if all are plain values."""
    total = getattr(child, "_sum", None)
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    if (
        not isinstance(bounds, list)
        or not isinstance(buckets, list)
        or len(bounds) != len(buckets)
        or not bounds
        or bounds[-1] != float("inf")
        or not _plain(total)
        or not all(_plain(bucket) for bucket in buckets)
    ):
        return None
    return tuple(bounds), total, buckets


def direct_record(
    requests: Any, request_size: Any, response_size: Any, duration: Any, in_flight: Any
) -> Record | None:
    """One request's count, body sizes and duration written under one lock, and the request
    taken out of the ``in_flight`` gauge; None unless every value is plain (`_plain`)."""
    count: Any = getattr(requests, "_value", None)
    running: Any = getattr(in_flight, "_value", None)
    sizes_in, sizes_out, durations = map(_histogram, (request_size, response_size, duration))
    if (
        not _plain(count)
        or not _plain(running)
        or sizes_in is None
        or sizes_out is None
        or durations is None
    ):
        return None
    in_bounds, in_sum, in_buckets = sizes_in
    out_bounds, out_sum, out_buckets = sizes_out
    bounds, total, buckets = durations

    leave = running.inc  # under the gauge's own lock, as the request's entry was counted

    def record(request_bytes: float, response_bytes: float, seconds: float) -> None:
        leave(-1)
        with _WRITES:
            count._value += 1
            in_sum._value += request_bytes
            in_buckets[bisect_left(in_bounds, request_bytes)]._value += 1
            out_sum._value += response_bytes
            out_buckets[bisect_left(out_bounds, response_bytes)]._value += 1
            total._value += seconds
            buckets[bisect_left(bounds, seconds)]._value += 1

    return record
