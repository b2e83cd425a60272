"""Store backends. `MemoryStore` is always available; the others need their extra."""

from __future__ import annotations

from typing import Any

from bastion.stores.memory import MemoryStore
from bastion.stores.protocols import (
    Claim,
    IdempotencyStore,
    RateLimitDecision,
    RateLimitHit,
    RateLimitStore,
    Store,
)

__all__ = [
    "Claim",
    "IdempotencyStore",
    "MemoryStore",
    "RateLimitDecision",
    "RateLimitHit",
    "RateLimitStore",
    "RedisStore",
    "SQLStore",
    "Store",
]

_LAZY = {"RedisStore": "bastion.stores.redis", "SQLStore": "bastion.stores.sql"}


def __getattr__(name: str) -> Any:
    # Imported on first use so `import bastion` never pulls in redis or sqlalchemy.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bastion.stores' has no attribute {name!r}")
