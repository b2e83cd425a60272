"""`RateLimitSettings`: the rate-limit policy and how the middleware applies it."""

from __future__ import annotations

import dataclasses
import typing

from bastion._settings import EnvSettings
from bastion.exceptions import ConfigurationError
from bastion.ratelimit._proxies import parse_networks
from bastion.ratelimit._tiers import Tier

__all__ = ["RateLimitSettings"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitSettings(EnvSettings):
    """How `RateLimitMiddleware` limits requests; environment prefix ``BASTION_RATELIMIT_``.

    ``tiers`` is the policy: every tier whose routes and methods match a request applies, and
    the request passes only if all of them allow it. Tiers are built in code (the presets are
    one-liners: ``RateLimitSettings(tiers=presets())``); every other field can come from the
    environment.
    """

    ENV_PREFIX: typing.ClassVar[str] = "BASTION_RATELIMIT_"

    tiers: tuple[Tier, ...] = ()
    """The policy: every tier whose routes and methods match a request applies to it."""
    fail_open: bool = True
    """When the store fails: let requests through and count the fault (True), or answer 503.
    Open by default because a limiter protects capacity, and an outage of its store should not
    take down every route, health checks included; a tier guarding against abuse (sign-ups,
    credential stuffing) can say ``fail_open=False`` for itself."""
    headers: bool = True
    """Send the ``RateLimit-Policy`` and ``RateLimit`` fields on every limited response."""
    legacy_headers: bool = False
    """Also send ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset``."""
    trusted_proxies: tuple[str, ...] = ()
    """Addresses or networks of your reverse proxies; only their forwarding headers count."""
    proxy_header: str = "x-forwarded-for"
    """The forwarding header your proxies set: ``x-forwarded-for`` or ``forwarded`` (RFC 7239).
    Only that one is read, so a client cannot slip a forged one past a proxy that sets the
    other."""
    ipv6_prefix_length: int = 64
    """IPv6 clients are limited per network of this size, since one host owns a whole /64."""
    max_body_bytes: int = 65_536
    """Largest body buffered for a JSON-field key; a larger one falls back to the next key."""
    store_error_retry_after: int = 1
    """``Retry-After`` seconds on the 503 sent when the store fails and a tier fails closed."""
    shadow: bool = False
    """Shadow mode for every tier: decide, count (``outcome="would_limit"``) and log, but let
    every request through with no rate-limit fields; see `Tier.shadow`."""
    concurrency_lease: int = 30
    """Seconds a concurrency slot outlives a worker that died holding it; renewed every third
    of it while the request runs."""
    concurrency_retry_after: int = 1
    """``Retry-After`` seconds on a 429 from a concurrency tier: when a slot frees is unknown."""
    replay_tier: Tier | None = None
    """The tier that charges what an `IdempotencyMiddleware` inside answers itself (replays,
    in-flight 409s, 422s), which never cost the normal tiers anything; none by default, so
    they are free. Only a plain tier (a static cost, no shadow, overrides, count_when or
    concurrency, a key that needs no body); with ``shadow`` set here, it is shadowed too.
    See docs/rate-limiting.md, "Order of middleware"."""

    def __post_init__(self) -> None:
        tiers = tuple(self.tiers)
        if not all(isinstance(tier, Tier) for tier in tiers):
            raise ConfigurationError("tiers must be Tier instances")
        names = [tier.name for tier in tiers]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"tier names must be unique: {names}")
        object.__setattr__(self, "tiers", tiers)
        replay = self.replay_tier
        if replay is not None:
            if not isinstance(replay, Tier):
                raise ConfigurationError("replay_tier must be a Tier")
            if replay.name in names:
                raise ConfigurationError(f"replay_tier's name {replay.name!r} is taken by a tier")
            if (
                not isinstance(replay.cost, int)
                or replay.shadow
                or replay.overrides is not None
                or replay.count_when is not None
                or replay.concurrency
                or replay.key.needs_body
            ):
                raise ConfigurationError(
                    "replay_tier must be a plain tier: a static cost, no shadow, overrides, "
                    "count_when or concurrency, and a key that needs no body"
                )
        parse_networks(self.trusted_proxies)
        proxy_header = self.proxy_header.strip().lower()
        if proxy_header not in {"x-forwarded-for", "forwarded"}:
            raise ConfigurationError("proxy_header must be 'x-forwarded-for' or 'forwarded'")
        object.__setattr__(self, "proxy_header", proxy_header)
        if not 0 <= self.ipv6_prefix_length <= 128:
            raise ConfigurationError("ipv6_prefix_length must be between 0 and 128")
        if self.max_body_bytes < 0:
            raise ConfigurationError("max_body_bytes cannot be negative")
        if self.store_error_retry_after < 0:
            raise ConfigurationError("store_error_retry_after cannot be negative")
        if self.concurrency_lease < 1 or self.concurrency_retry_after < 1:
            raise ConfigurationError(
                "concurrency_lease and concurrency_retry_after must be at least 1 second"
            )
