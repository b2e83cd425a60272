"""The tiers of a `RateLimitMiddleware` as each request reads them: everything a tier needs
per request computed once, and the tiers that may apply to each method."""

from __future__ import annotations

from bastion.ratelimit._headers import limit_prefix, policy_item
from bastion.ratelimit._tiers import Tier, compile_routes
from bastion.stores._protocols import RateLimitHit

__all__ = ["HIT_CACHE_SIZE", "PreparedTier", "TierGroup"]

HIT_CACHE_SIZE = 4096
"""Hits kept per tier for keys seen recently; the cache is emptied whenever it fills."""


class PreparedTier:
    """A tier with everything a request needs precomputed."""

    __slots__ = (
        "algorithm",
        "concurrency",
        "cost",
        "cost_of",
        "count_when",
        "everything",
        "exact",
        "fail_open",
        "featured",
        "hits",
        "key",
        "limit",
        "limit_prefix",
        "methods",
        "name",
        "needs_body",
        "overrides",
        "pattern",
        "policy",
        "prefix",
        "shadow",
        "unit",
        "window",
        "window_ms",
    )

    def __init__(self, tier: Tier, fail_open: bool, shadow: bool = False) -> None:
        matcher = compile_routes(tier.routes)
        self.everything = matcher.everything
        self.exact = matcher.exact
        self.pattern = matcher.pattern
        self.name = tier.name
        self.methods = tier.methods
        self.key = tier.key
        self.needs_body = bool(tier.key.needs_body) or bool(getattr(tier.cost, "needs_body", False))
        self.prefix = tier.name + ":"
        self.algorithm = tier.algorithm
        self.limit = tier.limit
        self.window = None if tier.concurrency else tier.window
        self.window_ms = tier.window_ms
        # a computed cost (cost_of) is asked per request; `cost` is then a placeholder
        self.cost_of = None if isinstance(tier.cost, int) else tier.cost
        self.cost = tier.cost if isinstance(tier.cost, int) else 1
        self.fail_open = fail_open if tier.fail_open is None else tier.fail_open
        self.limit_prefix = limit_prefix(tier.name)
        self.unit = tier.unit
        self.policy = policy_item(tier.name, tier.limit, self.window, tier.unit)
        self.shadow = shadow or tier.shadow
        when = tier.count_when
        self.count_when = when.__contains__ if isinstance(when, frozenset) else when
        self.overrides = tier.overrides
        self.concurrency = tier.concurrency
        self.featured = bool(
            self.shadow
            or self.cost_of is not None
            or self.count_when is not None
            or self.overrides is not None
            or self.concurrency
        )
        # the same key asks for the same (immutable) hit every time: build it once
        self.hits: dict[str, RateLimitHit] = {}

    def hit(self, key: str) -> RateLimitHit:
        """Build and cache the hit for ``key`` (the middleware looks in ``hits`` first)."""
        if len(self.hits) >= HIT_CACHE_SIZE:
            self.hits.clear()
        hit = self.hits[key] = RateLimitHit(
            self.prefix + key, self.algorithm, self.limit, self.window_ms, self.cost
        )
        return hit


class TierGroup:
    """The tiers that may apply to one method, and their policy field when all of them do."""

    __slots__ = ("featured", "policy", "tiers")

    def __init__(self, tiers: tuple[PreparedTier, ...]) -> None:
        self.tiers = tiers
        self.policy = b", ".join(tier.policy for tier in tiers)
        # any tier using shadow mode, a computed cost, overrides, count_when or concurrency
        # sends the request down the longer path; without them the path is as it always was
        self.featured = any(tier.featured for tier in tiers)
