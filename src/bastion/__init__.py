"""bastion: pure ASGI middleware that make mutating endpoints safe to retry and to expose."""

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from bastion.metrics import metrics_app


def __getattr__(name: str) -> MetricsApp:
    # built on first import, so a missing prometheus_client fails there, naming the extra
    if name == "metrics_app":
        from bastion import metrics

        return metrics.metrics_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
