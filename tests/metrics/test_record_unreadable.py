"""The ``record_unreadable`` idempotency outcome reaches Prometheus and OpenTelemetry."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bastion import IdempotencyMiddleware, MultiObserver, OTelObserver, PrometheusObserver
from bastion.stores import Claim, MemoryStore
from tests.metrics.conftest import value

pytestmark = pytest.mark.anyio

DECISIONS = "bastion_idempotency_decisions_total"


class UnreadableStore(MemoryStore):
    """Hands back every stored response in a format this version does not know."""

    async def claim(self, key: str, fingerprint: str, token: str, *, lease_ms: int) -> Claim:
        claim = await super().claim(key, fingerprint, token, lease_ms=lease_ms)
        if claim.response is not None:
            return claim._replace(response=b"\x07unknown")
        return claim


async def test_record_unreadable_is_counted_and_traced(registry: CollectorRegistry) -> None:
    """Exported from zero, counted once per unreadable record, and a span event."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    observer = MultiObserver([PrometheusObserver(registry=registry), OTelObserver()])
    runs: list[int] = []

    async def pay(request: Request) -> JSONResponse:
        runs.append(1)
        return JSONResponse({"paid": True}, status_code=201)

    app = IdempotencyMiddleware(
        Starlette(routes=[Route("/pay", pay, methods=["POST"])]),
        store=UnreadableStore(),
        observer=observer,
    )
    assert value(registry, DECISIONS, outcome="record_unreadable") == 0
    transport = httpx.ASGITransport(app=app)
    tracer = tracer_provider.get_tracer("test")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        await client.post("/pay", headers={"idempotency-key": "k"}, content=b"{}")
        with tracer.start_as_current_span("retry"):
            retry = await client.post("/pay", headers={"idempotency-key": "k"}, content=b"{}")
    tracer_provider.shutdown()
    assert retry.status_code == 503
    assert runs == [1]
    assert value(registry, DECISIONS, outcome="record_unreadable") == 1
    (span,) = spans.get_finished_spans()
    assert (span.attributes or {})["bastion.idempotency.outcome"] == "record_unreadable"
