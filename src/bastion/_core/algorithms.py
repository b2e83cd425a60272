"""The three rate-limit algorithms as pure functions of (hit, state, now).

Every store runs these exact rules: the memory and SQL stores call this module, the Redis
store runs a Lua port of it that the conformance suite holds to the same answers. All
arithmetic is on integers (milliseconds, or 1/limit of a millisecond for GCRA), so Python and
Lua agree to the last unit and no float rounding hands out an extra request.

A state is three integers whose meaning depends on the algorithm:

- ``fixed_window``: (window start, count in it, 0). Windows are aligned to multiples of the
  window length.
- ``sliding_window``: (current window start, count in it, count in the previous window). The
  previous window's count is weighted by how much of it still overlaps the sliding window.
- ``gcra``: (theoretical arrival time in ms, remainder in 1/limit ms, time of the last
  decision in ms). A bucket of ``limit`` tokens refilled at one token per ``window / limit``; a
  full bucket allows a burst of ``limit``.

Each worker passes its own clock, and clocks differ. A bucket carries its own time (the window
start, or GCRA's last decision), and a caller whose ``now`` is behind it decides as of the
bucket's time instead: it joins the window another worker opened rather than taking the bucket
for empty and starting an older window over it, which let two workers 0.25 s apart admit
several times the limit. A bucket time more than `MAX_CLOCK_LEAD_MS` ahead is a broken clock's,
and is ignored rather than trusted (it would otherwise hold the bucket until that time comes).
"""

from __future__ import annotations

from collections.abc import Callable

from bastion._core.types import RateLimitDecision, RateLimitHit

__all__ = ["MAX_CLOCK_LEAD_MS", "State", "decide", "expires_at"]

State = tuple[int, int, int]

_new_tuple: Callable[[type[RateLimitDecision], tuple[bool, int, int, int, int]], RateLimitDecision]
_new_tuple = tuple.__new__
"""Builds a decision skipping the named tuple's Python-level ``__new__``: one is built per
tier per request."""

MAX_CLOCK_LEAD_MS = 60_000
"""How far ahead of a caller's clock a bucket's time may be and still be trusted (ms)."""


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _as_of(state: State, now: int, at: int) -> tuple[State | None, int]:
    """The state and time to decide with, given the bucket's own time ``state[at]`` ahead of
    ``now`` (the algorithms call it only then: a call per tier per request saved)."""
    if state[at] - now > MAX_CLOCK_LEAD_MS:
        return None, now
    return state, state[at]


def fixed_window(
    hit: RateLimitHit, state: State | None, now: int
) -> tuple[RateLimitDecision, State]:
    window, limit = hit.window_ms, hit.limit
    if state is not None and state[0] > now:
        state, now = _as_of(state, now, 0)
    start = now - now % window
    count = state[1] if state is not None and state[0] == start else 0
    allowed = count + hit.cost <= limit
    if allowed:
        count += hit.cost
    window_end = start + window - now
    reset = window_end if count else 0
    remaining = max(0, limit - count)
    decision = _new_tuple(
        RateLimitDecision, (allowed, limit, remaining, reset, 0 if allowed else window_end)
    )
    return decision, (start, count, 0)


def sliding_window(
    hit: RateLimitHit, state: State | None, now: int
) -> tuple[RateLimitDecision, State]:
    window, limit, cost = hit.window_ms, hit.limit, hit.cost
    if state is not None and state[0] > now:
        state, now = _as_of(state, now, 0)
    start = now - now % window
    current = previous = 0
    if state is not None:
        if state[0] == start:
            current, previous = state[1], state[2]
        elif state[0] == start - window:
            previous = state[1]
    elapsed = now - start
    left = window - elapsed
    # estimate = previous * left / window + current, compared after scaling by window
    allowed = previous * left + (current + cost) * window <= limit * window
    if allowed:
        current += cost
        retry_after = 0
    else:
        retry_after = _sliding_retry_after(limit, window, cost, current, previous, elapsed)
    used_scaled = previous * left + current * window
    remaining = max(0, (limit * window - used_scaled) // window)
    # more quota is back once one more unit than `remaining` would fit
    reset = 0
    if remaining < limit:
        reset = _sliding_retry_after(limit, window, remaining + 1, current, previous, elapsed)
    decision = _new_tuple(RateLimitDecision, (allowed, limit, remaining, reset, retry_after))
    return decision, (start, current, previous)


def _sliding_retry_after(
    limit: int, window: int, cost: int, current: int, previous: int, elapsed: int
) -> int:
    """Milliseconds until ``cost`` more fits, or one full window ahead when it never will."""
    left = window - elapsed
    spare = limit - current - cost
    if spare >= 0 and previous > 0:
        # previous * (window - e) <= spare * window, e the elapsed time in this window
        earliest = window - (spare * window) // previous
        return max(1, earliest - elapsed)
    if limit < cost:
        return left + window
    if current == 0:
        return left
    # next window: current becomes the weighted previous count
    earliest = max(0, window - ((limit - cost) * window) // current)
    return left + earliest


def gcra(hit: RateLimitHit, state: State | None, now: int) -> tuple[RateLimitDecision, State]:
    window, limit, cost = hit.window_ms, hit.limit, hit.cost
    if state is not None and state[2] > now:
        state, now = _as_of(state, now, 2)
    # times below are in 1/limit ms, so one token's emission interval is exactly `window`
    backlog = 0
    if state is not None:
        backlog = max(0, (state[0] - now) * limit + state[1])
    capacity = window * limit
    wanted = backlog + cost * window
    allowed = wanted <= capacity
    if allowed:
        backlog = wanted
        retry_after = 0
    else:
        retry_after = _ceil_div(wanted - capacity, limit)
    # a backlog above capacity (the window was shortened) is a bucket more than empty:
    # nothing remains, never a negative amount
    remaining = max(0, (capacity - backlog) // window)
    # the next token is back when the backlog has drained to fit one more than `remaining`
    reset = _ceil_div(backlog + (remaining + 1) * window - capacity, limit) if backlog else 0
    decision = _new_tuple(RateLimitDecision, (allowed, limit, remaining, reset, retry_after))
    return decision, (now + backlog // limit, backlog % limit, now)


_ALGORITHMS = {"fixed_window": fixed_window, "sliding_window": sliding_window, "gcra": gcra}


def decide(hit: RateLimitHit, state: State | None, now: int) -> tuple[RateLimitDecision, State]:
    """Decide one hit against its bucket state at ``now`` (ms); return the decision and the
    state to keep if the whole request is allowed."""
    return _ALGORITHMS[hit.algorithm](hit, state, now)


def expires_at(hit: RateLimitHit, state: State) -> int:
    """When a bucket's state stops mattering and may be evicted (ms)."""
    if hit.algorithm == "gcra":
        return state[0] + 1
    if hit.algorithm == "sliding_window":
        return state[0] + 2 * hit.window_ms
    return state[0] + hit.window_ms
