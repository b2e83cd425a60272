"""Tiered rate limits: tiers and presets, key extractors, IETF header fields, the middleware.

`bastion.ratelimit.keys` holds the key extractors a tier can use, `bastion.ratelimit.costs`
the functions that compute what a request costs.
"""

from bastion.ratelimit._middleware import RateLimitMiddleware
from bastion.ratelimit._overrides import LimitOverrides
from bastion.ratelimit._proxies import AddressResolver
from bastion.ratelimit._settings import RateLimitSettings
from bastion.ratelimit._tiers import Tier, presets

__all__ = [
    "AddressResolver",
    "LimitOverrides",
    "RateLimitMiddleware",
    "RateLimitSettings",
    "Tier",
    "presets",
]
