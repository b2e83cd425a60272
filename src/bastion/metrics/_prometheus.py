"""Prometheus metric definitions and `PrometheusObserver`, registered once per registry.

Nothing is registered at import time and prometheus_client itself is imported on first use, so
``import bastion`` works without the ``prometheus`` extra. Metrics are created once per
`CollectorRegistry` and reused, so an app factory that runs twice (tests, reloaders) does not
fail with "Duplicated timeseries".
"""

from __future__ import annotations

import threading
import typing
import weakref
from types import ModuleType
from typing import TYPE_CHECKING, Any

from bastion.exceptions import ConfigurationError, missing_extra
from bastion.metrics._settings import DEFAULT_STORE_BUCKETS, check_buckets
from bastion.observe import IdempotencyOutcome, RateLimitOutcome
from bastion.typing import Scope

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "HTTP_METHODS",
    "OTHER_METHOD",
    "DecisionMetrics",
    "HttpMetrics",
    "PrometheusObserver",
    "client",
    "multiprocess_mode",
]

HTTP_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"}
)
OTHER_METHOD = "_OTHER"
"""Any other method, as OpenTelemetry names it: a client cannot mint label values."""

IDEMPOTENCY_OUTCOMES: tuple[str, ...] = typing.get_args(IdempotencyOutcome)


def client() -> ModuleType:
    """prometheus_client, or the error that names the extra to install."""
    try:
        import prometheus_client
    except ImportError as exc:
        raise missing_extra("prometheus", "prometheus_client") from exc
    return prometheus_client


def multiprocess_mode() -> bool:
    """Whether prometheus_client writes values to ``PROMETHEUS_MULTIPROC_DIR`` files."""
    client()
    from prometheus_client import values

    return bool(getattr(values.ValueClass, "_multiprocess", False))


_lock = threading.Lock()
_bundles: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _bundle(registry: CollectorRegistry | None, kind: type[Any], config: tuple[Any, ...]) -> Any:
    """The metrics of ``kind`` on ``registry``, created on first use and shared afterwards."""
    prom = client()
    registry = prom.REGISTRY if registry is None else registry
    with _lock:
        per_registry = _bundles.setdefault(registry, {})
        existing = per_registry.get(kind.__name__)
        if existing is not None:
            if existing.config != config:
                raise ConfigurationError(
                    f"bastion's {kind.__name__} are already registered on this registry with "
                    f"other buckets ({existing.config} != {config}); use one configuration "
                    "per registry"
                )
            return existing
        try:
            bundle = kind(prom, registry, config)
        except ValueError as exc:  # a name registered by something else on this registry
            raise ConfigurationError(f"cannot register bastion's metrics: {exc}") from exc
        per_registry[kind.__name__] = bundle
        return bundle


class HttpMetrics:
    """The RED metrics `MetricsMiddleware` records, one set per registry."""

    def __init__(self, prom: ModuleType, registry: CollectorRegistry, config: tuple[Any, ...]):
        self.config = config
        duration_buckets, size_buckets = config
        self.requests: Counter = prom.Counter(
            "bastion_http_requests_total",
            "HTTP requests answered, by method, route template and status code.",
            ("method", "route", "status"),
            registry=registry,
        )
        self.duration: Histogram = prom.Histogram(
            "bastion_http_request_duration_seconds",
            "Time from the request reaching the middleware to the end of its response.",
            ("method", "route"),
            buckets=duration_buckets,
            registry=registry,
        )
        self.in_flight: Gauge = prom.Gauge(
            "bastion_http_requests_in_flight",
            "HTTP requests being processed.",
            ("method",),
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.request_size: Histogram = prom.Histogram(
            "bastion_http_request_size_bytes",
            "Request body sizes as received.",
            ("method", "route"),
            buckets=size_buckets,
            registry=registry,
        )
        self.response_size: Histogram = prom.Histogram(
            "bastion_http_response_size_bytes",
            "Response body sizes as sent.",
            ("method", "route"),
            buckets=size_buckets,
            registry=registry,
        )

    @classmethod
    def on(
        cls,
        registry: CollectorRegistry | None,
        duration_buckets: tuple[float, ...],
        size_buckets: tuple[float, ...],
    ) -> HttpMetrics:
        """The request metrics on ``registry`` (the default registry when None)."""
        bundle: HttpMetrics = _bundle(registry, cls, (duration_buckets, size_buckets))
        return bundle


class DecisionMetrics:
    """What the other middleware decided, and how their stores performed."""

    def __init__(self, prom: ModuleType, registry: CollectorRegistry, config: tuple[Any, ...]):
        self.config = config
        (store_buckets,) = config
        self.idempotency: Counter = prom.Counter(
            "bastion_idempotency_decisions_total",
            "Idempotency decisions by outcome.",
            ("outcome",),
            registry=registry,
        )
        self.ratelimit: Counter = prom.Counter(
            "bastion_ratelimit_decisions_total",
            "Rate-limit decisions by tier and outcome.",
            ("tier", "outcome"),
            registry=registry,
        )
        self.store_duration: Histogram = prom.Histogram(
            "bastion_store_operation_duration_seconds",
            "Latency of store calls, failed ones included.",
            ("backend", "operation"),
            buckets=store_buckets,
            registry=registry,
        )
        self.store_errors: Counter = prom.Counter(
            "bastion_store_errors_total",
            "Store calls that raised.",
            ("backend", "operation"),
            registry=registry,
        )

    @classmethod
    def on(
        cls, registry: CollectorRegistry | None, store_buckets: tuple[float, ...]
    ) -> DecisionMetrics:
        """The decision metrics on ``registry`` (the default registry when None)."""
        bundle: DecisionMetrics = _bundle(registry, cls, (store_buckets,))
        return bundle


class PrometheusObserver:
    """Counts the decisions bastion's middleware report, for ``observer=`` on each of them.

    Pass the same ``registry`` as `MetricsMiddleware` (or none to both). Label children are
    bound once per label set and cached, so a decision costs one dictionary lookup and one
    increment.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        store_buckets: tuple[float, ...] = DEFAULT_STORE_BUCKETS,
    ) -> None:
        check_buckets("store_buckets", store_buckets)
        self._metrics = metrics = DecisionMetrics.on(registry, tuple(map(float, store_buckets)))
        # Every idempotency outcome is known: export each from zero so rate() sees the first one.
        self._idempotency = {o: metrics.idempotency.labels(o) for o in IDEMPOTENCY_OUTCOMES}
        self._ratelimit: dict[tuple[str, str], Any] = {}
        self._store: dict[tuple[str, str], tuple[Any, Any]] = {}

    def idempotency(self, scope: Scope, outcome: IdempotencyOutcome) -> None:
        child = self._idempotency.get(outcome)
        if child is None:
            child = self._idempotency[outcome] = self._metrics.idempotency.labels(outcome)
        child.inc()

    def rate_limit(self, scope: Scope, tier: str, outcome: RateLimitOutcome) -> None:
        key = (tier, outcome)
        child = self._ratelimit.get(key)
        if child is None:
            child = self._ratelimit[key] = self._metrics.ratelimit.labels(tier, outcome)
        child.inc()

    def store_call(self, backend: str, operation: str, seconds: float, *, error: bool) -> None:
        key = (backend, operation)
        children = self._store.get(key)
        if children is None:
            metrics = self._metrics
            children = self._store[key] = (
                metrics.store_duration.labels(backend, operation),
                metrics.store_errors.labels(backend, operation),
            )
        children[0].observe(seconds)
        if error:
            children[1].inc()
