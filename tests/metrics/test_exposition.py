"""metrics_app: content negotiation, exemplars in OpenMetrics only, output that parses."""

from __future__ import annotations

import gzip

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bastion import MetricsApp, MetricsMiddleware, MetricsSettings, PrometheusObserver, metrics_app
from bastion.typing import Message, Scope
from tests.metrics.conftest import client

pytestmark = pytest.mark.anyio

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello")


def served(registry: CollectorRegistry, **options: bool) -> MetricsMiddleware:
    app = Starlette(
        routes=[Route("/hello/{name}", hello), Route("/metrics", MetricsApp(registry=registry))]
    )
    return MetricsMiddleware(app, registry=registry, settings=MetricsSettings(**options))


async def test_text_exposition_parses(registry: CollectorRegistry) -> None:
    """The default text format parses with prometheus_client's parser, every family typed."""
    PrometheusObserver(registry=registry).store_call("memory", "claim", 0.001, error=False)
    app = served(registry)
    async with client(app) as c:
        await c.get("/hello/world")
        response = await c.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    expected = {
        "bastion_http_requests": "counter",
        "bastion_http_request_duration_seconds": "histogram",
        "bastion_http_requests_in_flight": "gauge",
        "bastion_http_request_size_bytes": "histogram",
        "bastion_http_response_size_bytes": "histogram",
        "bastion_idempotency_decisions": "counter",
        "bastion_store_operation_duration_seconds": "histogram",
        "bastion_store_errors": "counter",
    }
    for name, kind in expected.items():
        assert families[name].type == kind, name
    samples = families["bastion_http_requests"].samples
    assert any(
        s.labels == {"method": "GET", "route": "/hello/{name}", "status": "200"} and s.value == 1
        for s in samples
    )


async def test_openmetrics_on_request_carries_trace_exemplars(registry: CollectorRegistry) -> None:
    """Inside a sampled trace, durations carry its trace id, shown only in OpenMetrics."""
    tracer = TracerProvider().get_tracer("test")
    app = served(registry)
    with tracer.start_as_current_span("client") as span:
        await _get(app, "/hello/traced")
    trace_id = format(span.get_span_context().trace_id, "032x")

    async with client(app) as c:
        openmetrics = await c.get("/metrics", headers={"accept": OPENMETRICS})
        text = await c.get("/metrics")
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    exemplars = [
        s.exemplar
        for family in openmetrics_families(openmetrics.text)
        if family.name == "bastion_http_request_duration_seconds"
        for s in family.samples
        if s.exemplar is not None
    ]
    assert [e.labels for e in exemplars] == [{"trace_id": trace_id}]
    assert trace_id not in text.text
    list(text_string_to_metric_families(text.text))  # and the text format still parses


async def test_no_exemplar_without_a_sampled_trace(registry: CollectorRegistry) -> None:
    """No trace, an unsampled trace, or exemplars turned off: no exemplar at all."""
    unsampled = TracerProvider(sampler=ALWAYS_OFF).get_tracer("test")
    sampled = TracerProvider().get_tracer("test")
    app = served(registry)
    await _get(app, "/hello/plain")
    with unsampled.start_as_current_span("client"):
        await _get(app, "/hello/unsampled")
    off = served(CollectorRegistry(), exemplars=False)
    with sampled.start_as_current_span("client"):
        await _get(off, "/hello/off")
    for app_ in (app, off):
        async with client(app_) as c:
            body = (await c.get("/metrics", headers={"accept": OPENMETRICS})).text
        assert "trace_id" not in body


async def _get(app: MetricsMiddleware, path: str) -> None:
    """One raw GET, so the caller's current span stays current inside the app."""

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        return None

    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "root_path": "",
        "headers": [],
        "query_string": b"",
    }
    await app(scope, receive, send)


async def test_gzip_head_and_method_not_allowed(registry: CollectorRegistry) -> None:
    """Scrapers asking for gzip get it, HEAD has no body, and other methods get 405."""
    app = served(registry)
    async with client(app) as c:
        await c.get("/hello/x")
        zipped = await c.get("/metrics", headers={"accept-encoding": "gzip"})
        head = await c.head("/metrics")
        post = await c.post("/metrics")
    assert zipped.headers["content-encoding"] == "gzip"
    assert b"bastion_http_requests_total" in zipped.content  # httpx decompressed it
    assert int(zipped.headers["content-length"]) < len(zipped.content)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"].startswith("text/plain")
    assert post.status_code == 405
    assert post.headers["allow"] == "GET, HEAD"
    assert post.headers["content-type"] == "application/problem+json"


async def test_default_metrics_app_serves_the_default_registry() -> None:
    """`metrics_app` needs no argument: it serves what the default registry holds."""
    MetricsMiddleware(Starlette())
    async with client(metrics_app) as c:
        response = await c.get("/")
    assert response.status_code == 200
    assert "bastion_http_requests_in_flight" in response.text
    assert metrics_app.registry() is REGISTRY


async def test_serves_lifespan_and_closes_websockets() -> None:
    """Run on its own, the app completes lifespan; a websocket is closed politely."""
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[Message] = []

    async def receive() -> Message:
        return next(incoming)

    async def send(message: Message) -> None:
        sent.append(message)

    app = MetricsApp(registry=CollectorRegistry())
    await app({"type": "lifespan"}, receive, send)
    await app({"type": "websocket", "path": "/"}, receive, send)
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
        "websocket.close",
    ]


def test_gzip_body_is_valid() -> None:
    """The gzip encoding is a real gzip stream of the text exposition."""
    registry = CollectorRegistry()
    PrometheusObserver(registry=registry)
    body, headers = MetricsApp(registry=registry)._render(
        {"headers": [(b"accept-encoding", b"gzip, deflate")]}
    )
    assert (b"content-encoding", b"gzip") in headers
    assert b"bastion_idempotency_decisions_total" in gzip.decompress(body)
