"""`MetricsMiddleware`: RED metrics per route template, and an OpenTelemetry server span."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from bastion._asgi import ANSWERED_SCOPE_KEY
from bastion.metrics._direct import Children, incrementer
from bastion.metrics._otel import Tracing, trace_exemplar
from bastion.metrics._prometheus import HTTP_METHODS, OTHER_METHOD, HttpMetrics, multiprocess_mode
from bastion.metrics._routes import RouteResolver
from bastion.metrics._settings import MetricsSettings
from bastion.typing import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

__all__ = ["BASTION_LABEL", "UNMATCHED_LABEL", "MetricsMiddleware"]

UNMATCHED_LABEL = "<unmatched>"
"""The route label of every request no route matched (404s, redirects to a trailing slash)."""
BASTION_LABEL = "<bastion>"
"""The route label of answers a bastion middleware gave before routing (400, 409, 422, 429,
503, idempotent replays): counted, never dropped, and kept apart from unmatched paths."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # in sys.modules as None: blocked on purpose
        return False


class _Exchange:
    """One request's status and body sizes, noted by the ``receive`` and ``send`` it is given."""

    __slots__ = ("_receive", "_send", "request_bytes", "response_bytes", "status")

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self.status = 0
        self.request_bytes = 0
        self.response_bytes = 0

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.request_bytes += len(message.get("body", b""))
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            self.response_bytes += len(message.get("body", b""))
        elif kind == "http.response.start":
            self.status = message["status"]
        await self._send(message)


class MetricsMiddleware:
    """Measures every HTTP request: count, duration, in-flight, body sizes, by route template.

    Labels are the method, the route template (``/users/{id}``, never ``/users/42``) and the
    status code, so their number is bounded by the app's routes whatever clients send. Put it
    outermost so that it also counts what other middleware answer themselves. With OpenTelemetry
    on, each request also gets a server span, and duration observations carry its trace id as
    an exemplar. With only ``bastion[otel]`` installed, asking for OpenTelemetry (``otel=True``
    or a provider) records spans alone instead of failing for the missing prometheus_client.

    What a bastion middleware answered itself (400, 409, 422, 429, 503, replays) is labelled
    `BASTION_LABEL` whatever the framework: Starlette and FastAPI run middleware before routing,
    Litestar after, so the route would otherwise be known under one and not the others.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: MetricsSettings | None = None,
        registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.app = app
        self.settings = settings = settings or MetricsSettings()
        self._skip = settings.skip_paths
        self._resolve = RouteResolver()
        self._metrics: HttpMetrics | None = None
        self._in_flight: dict[str, Any] = {}
        self._children: dict[tuple[str, str, int], Children] = {}
        self._exemplar = None
        tracing = settings.otel or tracer_provider is not None or meter_provider is not None
        # With only bastion[otel] installed, asking for OpenTelemetry is enough: Prometheus,
        # on by default, is left out rather than refusing to start.
        if settings.prometheus and not (tracing and not _installed("prometheus_client")):
            self._metrics = metrics = HttpMetrics.on(
                registry, settings.duration_buckets, settings.size_buckets
            )
            # others on first use
            self._in_flight = {"GET": incrementer(metrics.in_flight.labels("GET"))}
            if settings.exemplars and not multiprocess_mode():
                self._exemplar = trace_exemplar()
        self._tracing: Tracing | None = None
        if tracing:
            self._tracing = Tracing(
                tracer_provider=tracer_provider,
                meter_provider=meter_provider,
                buckets=settings.duration_buckets,
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self._skip and scope["path"] in self._skip):
            await self.app(scope, receive, send)
            return
        if self._tracing is not None:
            await self._traced(scope, receive, send, self._tracing)
            return
        method = scope["method"]
        if method not in HTTP_METHODS:
            method = OTHER_METHOD
        exchange = _Exchange(receive, send)
        in_flight = self._in_flight.get(method)
        if in_flight is None:
            in_flight = self._gauge(method)
        in_flight(1)
        start = perf_counter()
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except BaseException:
            if not exchange.status:
                exchange.status = 500  # what the server answers for an app that raised
            raise
        finally:
            seconds = perf_counter() - start
            self._record(method, self._label(scope), exchange, seconds, in_flight)

    async def _traced(self, scope: Scope, receive: Receive, send: Send, tracing: Tracing) -> None:
        method = scope["method"]
        if method not in HTTP_METHODS:
            method = OTHER_METHOD
        exchange = _Exchange(receive, send)
        in_flight = None
        if self._metrics is not None:
            in_flight = self._in_flight.get(method)
            if in_flight is None:
                in_flight = self._gauge(method)
            in_flight(1)
        span, token = tracing.start(scope, method)
        error: BaseException | None = None
        start = perf_counter()
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except BaseException as exc:
            error = exc
            if not exchange.status:
                exchange.status = 500
            raise
        finally:
            seconds = perf_counter() - start
            route = None if ANSWERED_SCOPE_KEY in scope else self._resolve(scope)
            if in_flight is not None:
                label = route if route is not None else self._unrouted(scope)
                self._record(method, label, exchange, seconds, in_flight)  # inside the span
            tracing.finish(span, token, scope, method, route, exchange.status, seconds, error)

    def _gauge(self, method: str) -> Any:
        assert self._metrics is not None
        gauge = self._in_flight[method] = incrementer(self._metrics.in_flight.labels(method))
        return gauge

    def _label(self, scope: Scope) -> str:
        if ANSWERED_SCOPE_KEY in scope:
            return BASTION_LABEL
        route = self._resolve(scope)
        return route if route is not None else UNMATCHED_LABEL

    @staticmethod
    def _unrouted(scope: Scope) -> str:
        return BASTION_LABEL if ANSWERED_SCOPE_KEY in scope else UNMATCHED_LABEL

    def _record(
        self,
        method: str,
        route: str,
        exchange: _Exchange,
        seconds: float,
        in_flight: Callable[[float], None],
    ) -> None:
        """Count the request (and take it out of the in-flight gauge)."""
        key = (method, route, exchange.status)
        children = self._children.get(key)
        if children is None:
            assert self._metrics is not None
            children = self._children[key] = Children(self._metrics, *key)
        exemplar = self._exemplar() if self._exemplar is not None else None
        record = children.record
        if record is not None and exemplar is None:
            record(exchange.request_bytes, exchange.response_bytes, seconds)
            return
        in_flight(-1)
        children.requests(1)
        children.observe_request(exchange.request_bytes)
        children.observe_response(exchange.response_bytes)
        if exemplar is not None:
            children.duration.observe(seconds, exemplar)
        else:
            children.observe_duration(seconds)
