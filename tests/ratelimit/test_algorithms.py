"""The algorithms, through MemoryStore and a controllable clock, against reference models.

The models are written independently of `bastion._core.algorithms`: explicit event lists
and exact fractions instead of scaled integers, and every "how long until" answer found by
searching the model's own future instead of a closed form. Hypothesis draws random request
schedules; every decision field must match to the millisecond.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from math import floor
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.stores import MemoryStore, RateLimitDecision, RateLimitHit

START_MS = 1_800_000_000_000


class MsClock:
    """Whole milliseconds for the store; half a millisecond of margin against float rounding."""

    def __init__(self) -> None:
        self.now_ms = START_MS

    def __call__(self) -> float:
        return (self.now_ms + 0.5) / 1000


def first_true(predicate: Callable[[int], bool], low: int, high: int) -> int:
    """The least d in [low, high] with predicate(d), for a predicate that stays true once true."""
    assert predicate(high)
    while low < high:
        middle = (low + high) // 2
        if predicate(middle):
            high = middle
        else:
            low = middle + 1
    return low


class FixedWindowModel:
    """Counts the allowed events of the window each one falls in."""

    def __init__(self, limit: int, window: int) -> None:
        self.limit, self.window = limit, window
        self.events: list[tuple[int, int]] = []

    def used(self, t: int) -> Fraction:
        return Fraction(sum(c for e, c in self.events if e // self.window == t // self.window))

    def horizon(self, t: int) -> int:
        return 2 * self.window


class SlidingWindowModel(FixedWindowModel):
    """The previous window's events, weighted by how much of it still overlaps [t - W, t]."""

    def used(self, t: int) -> Fraction:
        w = self.window
        current = sum(c for e, c in self.events if e // w == t // w)
        previous = sum(c for e, c in self.events if e // w == t // w - 1)
        overlap = Fraction(w - t % w, w)
        return previous * overlap + current

    def horizon(self, t: int) -> int:
        return 3 * self.window


class TokenBucketModel(FixedWindowModel):
    """Tokens spent drain at limit per window; a hit fits while spent + cost <= limit."""

    def used(self, t: int) -> Fraction:
        spent, last = Fraction(0), None
        for e, c in self.events:
            if last is not None:
                spent = max(Fraction(0), spent - Fraction((e - last) * self.limit, self.window))
            spent += c
            last = e
        if last is None:
            return spent
        return max(Fraction(0), spent - Fraction((t - last) * self.limit, self.window))


MODELS: dict[str, type[FixedWindowModel]] = {
    "fixed_window": FixedWindowModel,
    "sliding_window": SlidingWindowModel,
    "gcra": TokenBucketModel,
}


def expected(model: FixedWindowModel, t: int, cost: int) -> RateLimitDecision:
    """What the model says of a hit of ``cost`` at ``t``; "how long until" is searched for."""
    horizon = model.horizon(t)
    fits = model.used(t) + cost <= model.limit
    retry = 0
    if not fits:
        retry = first_true(lambda d: model.used(t + d) + cost <= model.limit, 1, horizon)
    if fits:
        model.events.append((t, cost))
    try:
        after = model.used(t)
        remaining = max(0, floor(model.limit - after))
        reset = 0
        if remaining < model.limit:  # until one more unit than `remaining` is available
            reset = first_true(
                lambda d: floor(model.limit - model.used(t + d)) > remaining, 1, horizon
            )
    finally:
        if fits:
            model.events.pop()
    return RateLimitDecision(
        allowed=fits,
        limit=model.limit,
        remaining=remaining,
        reset_ms=reset,
        retry_after_ms=retry,
    )


tier_strategy = st.fixed_dictionaries(
    {
        "algorithm": st.sampled_from(sorted(MODELS)),
        "limit": st.integers(1, 12),
        "window": st.one_of(st.integers(1, 50), st.sampled_from([1000, 3000, 60_000])),
    }
)
step_strategy = st.tuples(
    # milliseconds to wait before the hit; None waits exactly the last advertised retry time
    st.one_of(st.none(), st.integers(0, 40), st.integers(0, 130_000)),
    st.integers(1, 12),
)


def run_schedule(tiers: list[dict[str, Any]], steps: list[tuple[int | None, int]]) -> None:
    clock = MsClock()
    store = MemoryStore(clock=clock)
    models = [MODELS[t["algorithm"]](t["limit"], t["window"]) for t in tiers]
    last: list[RateLimitDecision] = []
    last_cost = 0

    async def main() -> None:
        nonlocal last, last_cost
        for gap, wanted in steps:
            cost = min([wanted, *(tier["limit"] for tier in tiers)])
            waited_retry = gap is None and cost == last_cost and not all(d.allowed for d in last)
            if gap is None:
                gap = max((d.retry_after_ms for d in last), default=0)
            clock.now_ms += gap
            t = clock.now_ms
            hits = [
                RateLimitHit(f"k{i}", tier["algorithm"], tier["limit"], tier["window"], cost)
                for i, tier in enumerate(tiers)
            ]
            want = [expected(model, t, cost) for model in models]
            got = await store.hit(hits)
            assert got == want, (t, cost, tiers)
            if waited_retry and len(tiers) == 1:
                assert got[0].allowed, "waiting retry_after_ms was not enough"
            if all(d.allowed for d in got):
                for model in models:
                    model.events.append((t, cost))
            last, last_cost = got, cost

    anyio.run(main)


@pytest.mark.parametrize("algorithm", sorted(MODELS))
@given(
    limit=st.integers(1, 12),
    window=st.one_of(st.integers(1, 50), st.sampled_from([1000, 3000, 60_000])),
    steps=st.lists(step_strategy, min_size=1, max_size=30),
)
def test_algorithm_matches_reference_model(
    algorithm: str, limit: int, window: int, steps: list[tuple[int | None, int]]
) -> None:
    """Every decision (allowed, remaining, reset, retry) equals the reference model's."""
    run_schedule([{"algorithm": algorithm, "limit": limit, "window": window}], steps)


@given(
    tiers=st.lists(tier_strategy, min_size=2, max_size=3),
    steps=st.lists(step_strategy, min_size=1, max_size=30),
)
def test_several_tiers_match_models_all_or_nothing(
    tiers: list[dict[str, Any]], steps: list[tuple[int | None, int]]
) -> None:
    """Tiers decided together match their models, charged only when every tier allows."""
    run_schedule(tiers, steps)


@pytest.mark.parametrize("algorithm", sorted(MODELS))
@given(
    limit=st.integers(1, 12),
    window=st.integers(1, 5000),
    gaps=st.lists(st.integers(0, 3000), min_size=1, max_size=40),
)
def test_waiting_retry_after_is_enough_and_not_too_much(
    algorithm: str, limit: int, window: int, gaps: list[int]
) -> None:
    """After a denial, the hit passes at exactly retry_after_ms and not a millisecond before."""
    clock = MsClock()
    store = MemoryStore(clock=clock)
    hit = RateLimitHit("k", algorithm, limit, window)  # type: ignore[arg-type]

    async def main() -> None:
        for gap in gaps:
            clock.now_ms += gap
            decision = (await store.hit([hit]))[0]
            if decision.allowed:
                continue
            if decision.retry_after_ms > 1:
                clock.now_ms += decision.retry_after_ms - 1
                assert not (await store.hit([hit]))[0].allowed
                clock.now_ms += 1
            else:
                clock.now_ms += decision.retry_after_ms
            assert (await store.hit([hit]))[0].allowed

    anyio.run(main)


@pytest.mark.parametrize("algorithm", sorted(MODELS))
def test_cost_above_limit_is_always_denied(algorithm: str) -> None:
    """A hit that costs more than the whole quota can never pass, however long one waits."""
    clock = MsClock()
    store = MemoryStore(clock=clock)
    hit = RateLimitHit("k", algorithm, 3, 1000, cost=4)  # type: ignore[arg-type]

    async def main() -> None:
        for _ in range(3):
            decision = (await store.hit([hit]))[0]
            assert not decision.allowed
            assert decision.retry_after_ms > 0
            clock.now_ms += 10 * decision.retry_after_ms

    anyio.run(main)
