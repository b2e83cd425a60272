"""bastion: pure ASGI middleware that make mutating endpoints safe to retry and to expose."""

from bastion.exceptions import (
    BastionError,
    ConfigurationError,
    StoreError,
    StoreUnavailable,
    TransactionError,
)
from bastion.idempotency import IdempotencyMiddleware
from bastion.observe import MultiObserver, NullObserver, Observer
from bastion.settings import IdempotencySettings

__all__ = [
    "BastionError",
    "ConfigurationError",
    "IdempotencyMiddleware",
    "IdempotencySettings",
    "MultiObserver",
    "NullObserver",
    "Observer",
    "StoreError",
    "StoreUnavailable",
    "TransactionError",
]

__version__ = "0.1.0.dev0"
