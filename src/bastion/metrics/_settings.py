"""`MetricsSettings`: what `MetricsMiddleware` measures; environment prefix ``BASTION_METRICS_``."""

from __future__ import annotations

import dataclasses
import itertools
import math
import typing

from bastion._settings import EnvSettings
from bastion.exceptions import ConfigurationError

__all__ = [
    "DEFAULT_DURATION_BUCKETS",
    "DEFAULT_SIZE_BUCKETS",
    "DEFAULT_STORE_BUCKETS",
    "MetricsSettings",
]

DEFAULT_DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
"""prometheus_client's default buckets, which are also OpenTelemetry's advisory boundaries for
``http.server.request.duration``: dashboards built for either work unchanged."""

DEFAULT_SIZE_BUCKETS: tuple[float, ...] = (
    100.0,
    1_000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
    10_000_000.0,
)
"""Body sizes in bytes, one bucket per order of magnitude from 100 B to 10 MB."""

DEFAULT_STORE_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
"""Store calls take well under a millisecond when healthy, below the request buckets' range."""


def check_buckets(name: str, buckets: tuple[float, ...]) -> None:
    """Refuse bucket lists Prometheus or OpenTelemetry would reject or silently misreport."""
    if not buckets:
        raise ConfigurationError(f"{name} cannot be empty")
    if not all(math.isfinite(b) for b in buckets):
        raise ConfigurationError(f"{name} must be finite (+Inf is always added)")
    if any(a >= b for a, b in itertools.pairwise(buckets)):
        raise ConfigurationError(f"{name} must be strictly increasing")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MetricsSettings(EnvSettings):
    """What `MetricsMiddleware` records; environment prefix ``BASTION_METRICS_``.

    Prometheus metrics are on by default and OpenTelemetry is off, since its spans cost more
    per request and are useless until an SDK is configured; passing a ``tracer_provider`` or
    ``meter_provider`` to the middleware turns it on as well.
    """

    ENV_PREFIX: typing.ClassVar[str] = "BASTION_METRICS_"

    prometheus: bool = True
    """Record the ``bastion_http_*`` Prometheus metrics."""
    otel: bool = False
    """Open a server span per request and record ``http.server.request.duration``."""
    duration_buckets: tuple[float, ...] = DEFAULT_DURATION_BUCKETS
    """Upper bounds in seconds, for Prometheus and as OpenTelemetry's advisory boundaries."""
    size_buckets: tuple[float, ...] = DEFAULT_SIZE_BUCKETS
    """Upper bounds in bytes for the request and response body size histograms."""
    exemplars: bool = True
    """Attach the active trace id to duration observations (OpenMetrics, single-process only)."""
    skip_paths: frozenset[str] = frozenset()
    """Exact raw paths that are not measured at all, such as ``/metrics`` or ``/healthz``."""

    def __post_init__(self) -> None:
        if not (self.prometheus or self.otel):
            raise ConfigurationError("enable prometheus, otel or both: this measures nothing")
        check_buckets("duration_buckets", self.duration_buckets)
        check_buckets("size_buckets", self.size_buckets)
        object.__setattr__(self, "duration_buckets", tuple(map(float, self.duration_buckets)))
        object.__setattr__(self, "size_buckets", tuple(map(float, self.size_buckets)))
        object.__setattr__(self, "skip_paths", frozenset(self.skip_paths))
