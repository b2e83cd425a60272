"""The rate-limit reference model the store equivalence tests compare with.

A dictionary of bucket states decided by `bastion._core.algorithms` with the stores' rules
(all-or-nothing, expired states read as none), at whatever ``now`` each call passes, so a test
can move time backwards as a lagging worker's clock does.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from bastion._core.algorithms import State, decide, expires_at
from bastion.stores import RateLimitDecision, RateLimitHit

__all__ = ["ALGORITHMS", "SKEWED_STEPS", "SMALL_TIERS", "Model", "MutableClock"]

ALGORITHMS = st.sampled_from(["fixed_window", "sliding_window", "gcra"])
SMALL_TIERS = st.tuples(
    ALGORITHMS,
    st.integers(1, 12),
    st.sampled_from([1, 3, 10, 1_000, 7_919, 60_000]),
    st.integers(0, 4),
)
SKEWED_STEPS = st.lists(
    st.tuples(
        st.integers(0, 400),  # ms the true time moves on
        st.integers(-1_500, 1_500),  # this worker's clock error, ms
        st.lists(st.integers(0, 3), min_size=1, max_size=3, unique=True),
    ),
    min_size=10,
    max_size=60,
)
"""Requests from workers whose clocks err by up to 1.5 s either way, at rising true times."""


class Model:
    """Bucket states decided in Python, as every store must decide them."""

    def __init__(self) -> None:
        self.buckets: dict[str, tuple[State, int]] = {}

    def hit(self, hits: Sequence[RateLimitHit], now: int) -> list[RateLimitDecision]:
        decisions: list[RateLimitDecision] = []
        states: list[State] = []
        for one in hits:
            found = self.buckets.get(one.key)
            state = found[0] if found is not None and found[1] > now else None
            decision, new = decide(one, state, now)
            decisions.append(decision)
            states.append(new)
        if all(d.allowed for d in decisions):
            for one, new in zip(hits, states, strict=True):
                self.buckets[one.key] = (new, expires_at(one, new))
        return decisions


class MutableClock:
    """A store clock set to any time, backwards included (seconds, like `time.time`)."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        # half a millisecond over, so the store's int(seconds * 1000) gives back `ms` exactly
        return (self.ms + 0.5) / 1000
