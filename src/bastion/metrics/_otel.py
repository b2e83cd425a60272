"""OpenTelemetry: a server span per request, ``http.server.request.duration``, decision events.

Only ``opentelemetry-api`` is used, imported on first use. Without an SDK the API hands out
no-op tracers and meters, so all of this costs little and records nothing until the
application configures one. Attribute names follow the stable HTTP semantic conventions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from bastion.exceptions import missing_extra
from bastion.metrics._settings import DEFAULT_DURATION_BUCKETS, DEFAULT_STORE_BUCKETS
from bastion.observe import IdempotencyOutcome, RateLimitOutcome
from bastion.typing import Scope

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider

__all__ = ["OTelObserver", "Tracing", "trace_exemplar"]

_SCOPE_NAME = "bastion"


def api() -> ModuleType:
    """opentelemetry.trace, or the error that names the extra to install."""
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise missing_extra("otel", "opentelemetry-api") from exc
    return trace


def _version() -> str:
    from bastion._version import __version__

    return __version__


def trace_exemplar() -> Callable[[], dict[str, str] | None] | None:
    """A function giving the active sampled trace as an exemplar, or None without the API."""
    try:
        from opentelemetry.context import get_current
        from opentelemetry.trace import get_current_span
    except ImportError:
        return None

    def exemplar() -> dict[str, str] | None:
        current = get_current()
        if not current:  # the usual case without tracing: an empty context, no span to look up
            return None
        context = get_current_span(current).get_span_context()
        if context.is_valid and context.trace_flags.sampled:
            return {"trace_id": format(context.trace_id, "032x")}
        return None

    return exemplar


class _HeaderGetter:
    """Reads propagation headers (traceparent, baggage) straight from the ASGI header list."""

    def get(self, carrier: Iterable[tuple[bytes, bytes]], key: str) -> list[str] | None:
        name = key.lower().encode("latin-1")
        values = [v.decode("latin-1") for k, v in carrier if k == name]
        return values or None

    def keys(self, carrier: Iterable[tuple[bytes, bytes]]) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier]


_GETTER: Any = _HeaderGetter()  # duck-typed: subclassing Getter would import the API eagerly


def _error_type(error: BaseException) -> str:
    """The exception's fully qualified class name, as the semantic conventions ask."""
    kind = type(error)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


class Tracing:
    """Opens the server span and records the duration histogram for `MetricsMiddleware`."""

    __slots__ = (
        "_attach",
        "_detach",
        "_duration",
        "_error",
        "_extract",
        "_kind",
        "_set",
        "_tracer",
    )

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        buckets: tuple[float, ...] = DEFAULT_DURATION_BUCKETS,
    ) -> None:
        trace = api()
        from opentelemetry import context, metrics, propagate

        self._tracer = trace.get_tracer(_SCOPE_NAME, _version(), tracer_provider=tracer_provider)
        meter = metrics.get_meter(_SCOPE_NAME, _version(), meter_provider=meter_provider)
        self._duration = meter.create_histogram(
            "http.server.request.duration",
            unit="s",
            description="Duration of HTTP server requests.",
            explicit_bucket_boundaries_advisory=list(buckets),
        )
        self._kind = trace.SpanKind.SERVER
        self._error = trace.Status(trace.StatusCode.ERROR)
        self._extract = propagate.extract
        self._set = trace.set_span_in_context
        self._attach = context.attach
        self._detach = context.detach

    def start(self, scope: Scope, method: str) -> tuple[Span, object]:
        """Open the request's span, a child of any ``traceparent`` sent, and make it current."""
        parent: Context = self._extract(scope["headers"], getter=_GETTER)
        attributes = {
            "http.request.method": method,
            "url.scheme": scope.get("scheme", "http"),
            "url.path": scope["path"],
        }
        if method != scope["method"]:
            attributes["http.request.method_original"] = scope["method"]
        span = self._tracer.start_span(
            method, context=parent, kind=self._kind, attributes=attributes
        )
        return span, self._attach(self._set(span, parent))

    def finish(
        self,
        span: Span,
        token: object,
        scope: Scope,
        method: str,
        route: str | None,
        status: int,
        seconds: float,
        error: BaseException | None,
    ) -> None:
        """Name the span after its route, close it, and record the request's duration."""
        attributes: dict[str, str | int] = {
            "http.request.method": method,
            "url.scheme": scope.get("scheme", "http"),
        }
        if status:  # 0: nothing was sent (the client left first), so there is no status
            attributes["http.response.status_code"] = status
        if route is not None:
            attributes["http.route"] = route
            span.update_name(f"{method} {route}")
        error_type = None
        if error is not None:
            error_type = _error_type(error)
            span.record_exception(error)
        elif status >= 500:
            error_type = str(status)
        if error_type is not None:
            attributes["error.type"] = error_type
            span.set_status(self._error)
        span.set_attributes(attributes)
        # Recorded while the span is still current, so an SDK can attach it as an exemplar.
        self._duration.record(seconds, attributes)
        span.end()
        self._detach(token)  # type: ignore[arg-type]


class OTelObserver:
    """Reports bastion's decisions on the current span, and store latency as a histogram.

    Decisions become span events (``bastion.idempotency``, ``bastion.ratelimit``) on whatever
    span is current: the server span `MetricsMiddleware` opens, or one from other
    instrumentation. Combine with `PrometheusObserver` through `bastion.MultiObserver`.
    """

    def __init__(
        self,
        *,
        meter_provider: MeterProvider | None = None,
        store_buckets: tuple[float, ...] = DEFAULT_STORE_BUCKETS,
    ) -> None:
        trace = api()
        from opentelemetry import metrics
        from opentelemetry.context import get_current

        self._current_span = trace.get_current_span
        self._current_context = get_current
        self._span_context = trace.SpanContext
        self._trace_flags = trace.TraceFlags
        meter = metrics.get_meter(_SCOPE_NAME, _version(), meter_provider=meter_provider)
        self._store_duration = meter.create_histogram(
            "bastion.store.operation.duration",
            unit="s",
            description="Latency of bastion's store calls, failed ones included.",
            explicit_bucket_boundaries_advisory=list(store_buckets),
        )

    def _recording(self) -> Span | None:
        """The current span if it records; an empty context (no tracing anywhere: the usual
        case without an SDK) is told apart first, at half the cost of the span lookup."""
        current = self._current_context()
        if not current:
            return None
        span: Span = self._current_span(current)
        return span if span.is_recording() else None

    def idempotency(self, scope: Scope, outcome: IdempotencyOutcome) -> None:
        span = self._recording()
        if span is not None:
            span.set_attribute("bastion.idempotency.outcome", outcome)
            span.add_event("bastion.idempotency", {"bastion.idempotency.outcome": outcome})

    def claimed(self, scope: Scope) -> None:
        """The key was taken: an event, not an outcome (the outcome comes when it ends)."""
        span = self._recording()
        if span is not None:
            span.add_event("bastion.idempotency", {"bastion.idempotency.outcome": "claimed"})

    def span_context(self, scope: Scope) -> bytes | None:
        """The current span's trace id, span id and flags, if it is recorded: stored with the
        response, so that its replays can link here."""
        span = self._recording()
        if span is None:
            return None
        context = span.get_span_context()
        if not context.is_valid:
            return None
        trace_id: int = context.trace_id
        span_id: int = context.span_id
        return (
            trace_id.to_bytes(16, "big")
            + span_id.to_bytes(8, "big")
            + bytes((context.trace_flags,))
        )

    def replayed_from(self, scope: Scope, context: bytes) -> None:
        """Link the replay's span to the span of the request whose response it replays."""
        span = self._recording()
        if span is None or len(context) != 25:
            return
        original = self._span_context(
            trace_id=int.from_bytes(context[:16], "big"),
            span_id=int.from_bytes(context[16:24], "big"),
            is_remote=True,
            trace_flags=self._trace_flags(context[24]),
        )
        if original.is_valid:
            span.add_link(original, {"bastion.link": "idempotency.original"})

    def rate_limit(self, scope: Scope, tier: str, outcome: RateLimitOutcome) -> None:
        span = self._recording()
        if span is not None:
            span.add_event(
                "bastion.ratelimit",
                {"bastion.ratelimit.tier": tier, "bastion.ratelimit.outcome": outcome},
            )

    def store_call(self, backend: str, operation: str, seconds: float, *, error: bool) -> None:
        attributes: dict[str, Any] = {
            "bastion.store.backend": backend,
            "bastion.store.operation": operation,
        }
        if error:
            attributes["error.type"] = "_OTHER"  # the hook is not told which exception
        self._store_duration.record(seconds, attributes)
