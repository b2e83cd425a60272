"""Store backends. `MemoryStore` is always available; the others need their extra."""

from __future__ import annotations

from typing import Any as _Any

from bastion.stores._breaker import CircuitBreaker
from bastion.stores._memory import MemoryStore
from bastion.stores._protocols import (
    Claim,
    ClaimHitStore,
    ConcurrencyStore,
    IdempotencyStore,
    RateLimitDecision,
    RateLimitHit,
    RateLimitStore,
    SlotDecision,
    SlotRequest,
    Store,
    TierValidatingStore,
    TransactionalIdempotencyStore,
)

__all__ = [
    "CircuitBreaker",
    "Claim",
    "ClaimHitStore",
    "ConcurrencyStore",
    "IdempotencyStore",
    "MemoryStore",
    "RateLimitDecision",
    "RateLimitHit",
    "RateLimitStore",
    "RedisStore",
    "SQLStore",
    "SlotDecision",
    "SlotRequest",
    "Store",
    "TierValidatingStore",
    "TransactionalIdempotencyStore",
    "from_url",
]

_LAZY = {"RedisStore": "bastion.stores._redis", "SQLStore": "bastion.stores.sql"}


def __getattr__(name: str) -> _Any:
    # Imported on first use so `import bastion` never pulls in redis or sqlalchemy.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bastion.stores' has no attribute {name!r}")


def from_url(url: str, **options: _Any) -> _Any:
    """Build a store from a URL: ``memory://``, ``redis://``/``rediss://``/``redis+cluster://``,
    or any SQLAlchemy async URL (``postgresql+asyncpg://``, ``sqlite+aiosqlite://``,
    ``mysql+asyncmy://``). Options go to the store's constructor."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "memory":
        return MemoryStore(**options)
    if scheme.startswith(("redis", "rediss", "unix")):
        return __getattr__("RedisStore").from_url(url, **options)
    return __getattr__("SQLStore").from_url(url, **options)
