"""bastion: pure ASGI middleware that make mutating endpoints safe to retry and to expose."""

from bastion._version import __version__ as __version__
from bastion.exceptions import (
    BastionError,
    ConfigurationError,
    StoreError,
    StoreUnavailable,
    TransactionError,
)
from bastion.idempotency import IdempotencyMiddleware, IdempotencySettings
from bastion.metrics import (
    MetricsApp,
    MetricsMiddleware,
    MetricsSettings,
    OTelObserver,
    PrometheusObserver,
    metrics_app,
)
from bastion.observe import MultiObserver, NullObserver, Observer
from bastion.ratelimit import RateLimitMiddleware, RateLimitSettings, Tier

__all__ = [
    "BastionError",
    "ConfigurationError",
    "IdempotencyMiddleware",
    "IdempotencySettings",
    "MetricsApp",
    "MetricsMiddleware",
    "MetricsSettings",
    "MultiObserver",
    "NullObserver",
    "OTelObserver",
    "Observer",
    "PrometheusObserver",
    "RateLimitMiddleware",
    "RateLimitSettings",
    "StoreError",
    "StoreUnavailable",
    "Tier",
    "TransactionError",
    "metrics_app",
]
