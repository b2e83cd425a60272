"""Tiered rate limits: tiers and presets, key extractors, IETF header fields, the middleware.

`RateLimitMiddleware` is imported lazily: `bastion.settings` needs `Tier` from here, and the
middleware needs `bastion.settings`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bastion.ratelimit.tiers import Tier, presets

if TYPE_CHECKING:
    from bastion.ratelimit.middleware import RateLimitMiddleware

__all__ = ["RateLimitMiddleware", "Tier", "presets"]


def __getattr__(name: str) -> Any:
    if name == "RateLimitMiddleware":
        from bastion.ratelimit.middleware import RateLimitMiddleware

        return RateLimitMiddleware
    raise AttributeError(f"module 'bastion.ratelimit' has no attribute {name!r}")
