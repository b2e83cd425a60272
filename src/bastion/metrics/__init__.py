"""Metrics and tracing: Prometheus RED metrics, decision counters, OpenTelemetry spans.

prometheus_client and opentelemetry are imported when something here is first built, never
when this package is imported, so ``import bastion`` works without the extras. `metrics_app`
is built when it is first imported, which is where a missing prometheus_client is reported.
"""

from typing import TYPE_CHECKING

from bastion.metrics._exposition import MetricsApp
from bastion.metrics._middleware import BASTION_LABEL, UNMATCHED_LABEL, MetricsMiddleware
from bastion.metrics._otel import OTelObserver
from bastion.metrics._prometheus import PrometheusObserver
from bastion.metrics._settings import (
    DEFAULT_DURATION_BUCKETS,
    DEFAULT_SIZE_BUCKETS,
    DEFAULT_STORE_BUCKETS,
    MetricsSettings,
)

__all__ = [
    "BASTION_LABEL",
    "DEFAULT_DURATION_BUCKETS",
    "DEFAULT_SIZE_BUCKETS",
    "DEFAULT_STORE_BUCKETS",
    "UNMATCHED_LABEL",
    "MetricsApp",
    "MetricsMiddleware",
    "MetricsSettings",
    "OTelObserver",
    "PrometheusObserver",
    "metrics_app",
]

if TYPE_CHECKING:
    from bastion.metrics._exposition import metrics_app


def __getattr__(name: str) -> MetricsApp:
    if name == "metrics_app":
        from bastion.metrics import _exposition

        return _exposition.metrics_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
