"""OpenTelemetry: server spans, the duration histogram and decision events, via in-memory SDK."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bastion import (
    IdempotencyMiddleware,
    MetricsMiddleware,
    MetricsSettings,
    MultiObserver,
    OTelObserver,
    PrometheusObserver,
)
from bastion.metrics import DEFAULT_DURATION_BUCKETS
from bastion.stores import MemoryStore
from bastion.typing import ASGIApp
from tests.metrics.conftest import client, value

pytestmark = pytest.mark.anyio

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@dataclass
class OTel:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]


@pytest.fixture
def otel() -> Iterator[OTel]:
    """SDK providers with in-memory exporters, passed explicitly: no global state is touched."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield OTel(spans, reader, tracer_provider, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello")


async def server_error(request: Request) -> Response:
    return PlainTextResponse("unavailable", status_code=503)


async def crash(request: Request) -> Response:
    raise KeyError("missing")


def app_under_test() -> Starlette:
    return Starlette(
        routes=[
            Route("/hello/{name}", hello),
            Route("/down", server_error),
            Route("/crash", crash),
            Route("/pay/{id}", hello, methods=["POST"]),
        ]
    )


def traced(app: ASGIApp, otel: OTel, registry: CollectorRegistry) -> MetricsMiddleware:
    return MetricsMiddleware(
        app,
        registry=registry,
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )


async def test_server_span_per_request(otel: OTel, registry: CollectorRegistry) -> None:
    """Each request gets one SERVER span named after its route, with semconv attributes."""
    app = traced(app_under_test(), otel, registry)
    async with client(app) as c:
        await c.get("/hello/world?x=1")
    (span,) = otel.finished()
    assert span.name == "GET /hello/{name}"
    assert span.kind is SpanKind.SERVER
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "url.path": "/hello/world",
        "http.route": "/hello/{name}",
        "http.response.status_code": 200,
    }
    labels = {"method": "GET", "route": "/hello/{name}", "status": "200"}
    assert value(registry, "bastion_http_requests_total", **labels) == 1


async def test_server_errors_mark_the_span(otel: OTel, registry: CollectorRegistry) -> None:
    """A 5xx or an exception sets ERROR status and error.type; a 404 is not an error."""
    app = traced(app_under_test(), otel, registry)
    async with client(app) as c:
        await c.get("/down")
        with pytest.raises(KeyError):
            await c.get("/crash")
        await c.get("/nowhere")
    down, crashed, missing = otel.finished()
    assert down.status.status_code is StatusCode.ERROR
    assert (down.attributes or {})["error.type"] == "503"
    assert crashed.status.status_code is StatusCode.ERROR
    assert (crashed.attributes or {})["error.type"] == "KeyError"
    assert (crashed.attributes or {})["http.response.status_code"] == 500
    assert [e.name for e in crashed.events] == ["exception"]
    assert missing.name == "GET"  # no route: no template to name it after
    assert "http.route" not in (missing.attributes or {})
    assert missing.status.status_code is StatusCode.UNSET


async def test_incoming_traceparent_is_the_parent(otel: OTel, registry: CollectorRegistry) -> None:
    """A W3C ``traceparent`` makes the server span part of the caller's trace."""
    app = traced(app_under_test(), otel, registry)
    async with client(app) as c:
        await c.get("/hello/x", headers={"traceparent": TRACEPARENT})
    (span,) = otel.finished()
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert span.parent.is_remote


async def test_unknown_method_keeps_the_original(otel: OTel, registry: CollectorRegistry) -> None:
    """A method outside the registry is _OTHER, with the original kept on the span only."""
    app = traced(app_under_test(), otel, registry)
    async with client(app) as c:
        await c.request("BREW", "/hello/tea")
    (span,) = otel.finished()
    assert (span.attributes or {})["http.request.method"] == "_OTHER"
    assert (span.attributes or {})["http.request.method_original"] == "BREW"


async def test_duration_histogram(otel: OTel, registry: CollectorRegistry) -> None:
    """``http.server.request.duration`` is recorded in seconds with the advisory buckets."""
    app = traced(app_under_test(), otel, registry)
    async with client(app) as c:
        await c.get("/hello/a")
        await c.get("/hello/b")
        await c.get("/down")
    points = otel.points("http.server.request.duration")
    by_route = {(p.attributes.get("http.route"), p.attributes.get("error.type")): p for p in points}
    hello_point = by_route[("/hello/{name}", None)]
    assert hello_point.count == 2
    assert tuple(hello_point.explicit_bounds) == DEFAULT_DURATION_BUCKETS
    assert dict(hello_point.attributes) == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "http.response.status_code": 200,
        "http.route": "/hello/{name}",
    }
    assert by_route[("/down", "503")].count == 1


async def test_decisions_become_span_events(otel: OTel, registry: CollectorRegistry) -> None:
    """Idempotency decisions are events (and an attribute) on the request's server span."""
    observer = MultiObserver(
        [PrometheusObserver(registry=registry), OTelObserver(meter_provider=otel.meter_provider)]
    )
    app = traced(
        IdempotencyMiddleware(app_under_test(), store=MemoryStore(), observer=observer),
        otel,
        registry,
    )
    async with client(app) as c:
        await c.post("/pay/1", headers={"idempotency-key": "k"}, content=b"{}")
        await c.post("/pay/1", headers={"idempotency-key": "k"}, content=b"{}")
    first, replay = otel.finished()
    assert [(e.name, dict(e.attributes or {})) for e in first.events] == [
        ("bastion.idempotency", {"bastion.idempotency.outcome": "claimed"}),
        ("bastion.idempotency", {"bastion.idempotency.outcome": "stored"}),
    ]
    assert (replay.attributes or {})["bastion.idempotency.outcome"] == "replayed"
    assert replay.name == "POST"  # answered before routing
    assert value(registry, "bastion_idempotency_decisions_total", outcome="replayed") == 1
    store_points = otel.points("bastion.store.operation.duration")
    operations = {p.attributes["bastion.store.operation"]: p.count for p in store_points}
    assert operations == {"claim": 2, "complete": 1}


async def test_rate_limit_events_and_store_errors(otel: OTel) -> None:
    """Rate-limit decisions are events on the current span; failed store calls carry error.type."""
    observer = OTelObserver(meter_provider=otel.meter_provider)
    tracer = otel.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("request"):
        observer.rate_limit({}, "burst", "allowed")
        observer.rate_limit({}, "daily", "limited")
    observer.rate_limit({}, "burst", "allowed")  # no span: nothing to do, nothing raised
    observer.idempotency({}, "released")
    observer.store_call("redis", "hit", 0.002, error=True)
    (span,) = otel.finished()
    assert [dict(e.attributes or {}) for e in span.events] == [
        {"bastion.ratelimit.tier": "burst", "bastion.ratelimit.outcome": "allowed"},
        {"bastion.ratelimit.tier": "daily", "bastion.ratelimit.outcome": "limited"},
    ]
    (point,) = otel.points("bastion.store.operation.duration")
    assert point.attributes["error.type"] == "_OTHER"


async def test_otel_without_prometheus(otel: OTel, registry: CollectorRegistry) -> None:
    """With Prometheus off, spans are still made and nothing is registered."""
    app = MetricsMiddleware(
        app_under_test(),
        registry=registry,
        settings=MetricsSettings(prometheus=False, otel=True),
        tracer_provider=otel.tracer_provider,
    )
    async with client(app) as c:
        assert (await c.get("/hello/x")).status_code == 200
    assert [s.name for s in otel.finished()] == ["GET /hello/{name}"]
    assert list(registry.collect()) == []


async def test_without_an_sdk_it_is_a_no_op(registry: CollectorRegistry) -> None:
    """With only the API's default providers, requests are served and nothing fails."""
    app = MetricsMiddleware(
        app_under_test(), registry=registry, settings=MetricsSettings(otel=True)
    )
    async with client(app) as c:
        assert (await c.get("/hello/x")).status_code == 200
    labels = {"method": "GET", "route": "/hello/{name}", "status": "200"}
    assert value(registry, "bastion_http_requests_total", **labels) == 1


async def test_spans_of_concurrent_requests_stay_apart(
    otel: OTel, registry: CollectorRegistry
) -> None:
    """Concurrent requests each get their own span, events landing on the right one."""
    app = traced(
        IdempotencyMiddleware(
            app_under_test(),
            store=MemoryStore(),
            observer=OTelObserver(meter_provider=otel.meter_provider),
        ),
        otel,
        registry,
    )
    async with client(app) as c, anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(lambda n=n: c.post(f"/pay/{n}", headers={"idempotency-key": str(n)}))
    spans = otel.finished()
    assert len(spans) == 20
    assert len({s.context.span_id for s in spans}) == 20
    assert all(len(s.events) == 2 for s in spans)  # claimed, then stored


async def test_own_span_is_the_duration_exemplar(otel: OTel, registry: CollectorRegistry) -> None:
    """With tracing on, each duration observation links to the request's own server span."""
    from prometheus_client.openmetrics.exposition import generate_latest
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    app = traced(app_under_test(), otel, registry)
    async with client(app) as c:
        await c.get("/hello/x")
    (span,) = otel.finished()
    exposition = generate_latest(registry).decode()
    exemplars = [
        s.exemplar.labels
        for family in text_string_to_metric_families(exposition)
        if family.name == "bastion_http_request_duration_seconds"
        for s in family.samples
        if s.exemplar is not None
    ]
    assert exemplars == [{"trace_id": format(span.context.trace_id, "032x")}]


async def test_no_status_attribute_when_nothing_was_sent(
    otel: OTel, registry: CollectorRegistry
) -> None:
    """A request that ended without an answer has no http.response.status_code."""

    async def silent(scope: Any, receive: Any, send: Any) -> None:
        return None

    app = traced(silent, otel, registry)

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        raise AssertionError("nothing is sent")

    scope = {"type": "http", "method": "GET", "path": "/gone", "headers": [], "scheme": "http"}
    await app(scope, receive, send)
    (span,) = otel.finished()
    assert "http.response.status_code" not in (span.attributes or {})
    assert span.status.status_code is StatusCode.UNSET
