"""OpenTelemetry: a replay's span links to the original request's span, on every store, and
every decision (claim, replay, conflict, limit, fail-open) is an event on the request's span."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bastion import (
    IdempotencyMiddleware,
    IdempotencySettings,
    MetricsMiddleware,
    MetricsSettings,
    OTelObserver,
    RateLimitMiddleware,
    RateLimitSettings,
    Tier,
)
from bastion._core.records import StoredResponse
from bastion.stores import MemoryStore
from bastion.testing import FaultyStore
from bastion.typing import ASGIApp, Receive, Scope, Send
from tests.conftest import FakeClock
from tests.metrics.conftest import client
from tests.ratelimit.feature_stores import FEATURE_STORES

pytestmark = pytest.mark.anyio

OTHER_TRACE = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture
def spans() -> Iterator[tuple[InMemorySpanExporter, TracerProvider]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter, provider
    provider.shutdown()


@pytest.fixture(params=FEATURE_STORES)
async def any_store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Any]:
    """Each HTTP-tested backend in turn, fresh and empty."""
    async with request.param(clock) as store:
        yield store


class Handler:
    """201 once released (already released unless a test clears ``go``)."""

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.go = anyio.Event()
        self.go.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        self.started.set()
        await self.go.wait()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})


def traced(app: ASGIApp, provider: TracerProvider) -> MetricsMiddleware:
    return MetricsMiddleware(
        app, settings=MetricsSettings(prometheus=False, otel=True), tracer_provider=provider
    )


def outcomes(span: ReadableSpan) -> list[str]:
    return [
        str((e.attributes or {}).get("bastion.idempotency.outcome"))
        if e.name == "bastion.idempotency"
        else f"{(e.attributes or {})['bastion.ratelimit.tier']}:"
        f"{(e.attributes or {})['bastion.ratelimit.outcome']}"
        for e in span.events
    ]


async def test_a_replay_links_to_the_original_span_on_every_store(
    spans: tuple[InMemorySpanExporter, TracerProvider], any_store: Any
) -> None:
    """The original request's trace and span ids are stored with its response (format 3),
    and the replay's span, in another trace, gets a Link to that span context."""
    exporter, provider = spans
    observer = OTelObserver()
    app = traced(IdempotencyMiddleware(Handler(), store=any_store, observer=observer), provider)
    async with client(app) as http:
        first = await http.post("/pay", headers={"idempotency-key": "k"}, content=b"{}")
        replay = await http.post(
            "/pay",
            headers={
                "idempotency-key": "k",
                "traceparent": f"00-{OTHER_TRACE}-00f067aa0ba902b7-01",
            },
            content=b"{}",
        )
    assert first.status_code == replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    original, replayed = exporter.get_finished_spans()
    assert format(replayed.context.trace_id, "032x") == OTHER_TRACE
    (link,) = replayed.links
    assert link.context.trace_id == original.context.trace_id
    assert link.context.span_id == original.context.span_id
    assert link.context.trace_flags.sampled
    assert dict(link.attributes or {}) == {"bastion.link": "idempotency.original"}
    assert outcomes(original) == ["claimed", "stored"]
    assert outcomes(replayed) == ["replayed"]
    assert not original.links


async def test_every_decision_is_an_event_on_the_request_span(
    spans: tuple[InMemorySpanExporter, TracerProvider], clock: FakeClock
) -> None:
    """Claim, conflict, replay, rate limit (allowed and limited) and the idempotency store's
    fail-open are each an event on the span of the request they concern."""
    exporter, provider = spans
    observer = OTelObserver()
    store = FaultyStore(MemoryStore(clock=clock))
    handler = Handler()
    handler.go = anyio.Event()
    idem = IdempotencyMiddleware(
        handler, store=store, observer=observer, settings=IdempotencySettings(fail_open=True)
    )
    tier = Tier(name="writes", limit=2, window=60)
    limits = RateLimitSettings(tiers=(tier,))
    app = traced(
        RateLimitMiddleware(idem, store=store, settings=limits, observer=observer), provider
    )
    headers = {"idempotency-key": "k"}
    async with client(app) as http:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: http.post("/pay", headers=headers, content=b"{}"))
            await handler.started.wait()
            conflict = await http.post("/pay", headers=headers, content=b"{}")
            handler.go.set()
        replay = await http.post("/pay", headers=headers, content=b"{}")
        store.fail("claim")
        unprotected = await http.post("/pay", headers={"idempotency-key": "j"}, content=b"{}")
        store.heal()
        limited = await http.post("/pay", headers={"idempotency-key": "i"}, content=b"{}")
    assert [conflict.status_code, replay.status_code] == [409, 201]
    assert [unprotected.status_code, limited.status_code] == [201, 429]
    by_status = {}
    for span in exporter.get_finished_spans():
        by_status.setdefault((span.attributes or {})["http.response.status_code"], []).append(
            outcomes(span)
        )
    assert by_status[409] == [["conflict_in_flight"]]
    assert by_status[429] == [["writes:limited"]]
    # outside the idempotency layer, the limiter charges a keyed request once it is known to
    # be fresh: after the claim, before the handler runs; a replay and a 409 are not charged
    assert sorted(by_status[201]) == [
        ["replayed"],
        ["writes:allowed", "claimed", "stored"],
        ["writes:allowed", "store_error"],
    ]


async def test_untraced_records_keep_format_2(clock: FakeClock) -> None:
    """Without a recorded span (no tracer configured), nothing is added to the record: it
    is written in format 2, readable by versions that know no trace context."""
    store = MemoryStore(clock=clock)
    app = IdempotencyMiddleware(Handler(), store=store, observer=OTelObserver())
    async with client(app) as http:
        await http.post("/pay", headers={"idempotency-key": "k"}, content=b"{}")
    scope = {"headers": [], "client": ("127.0.0.1", 123)}
    from bastion.idempotency._fingerprint import fingerprint
    from bastion.idempotency._keys import default_principal, scoped_key

    key = scoped_key(default_principal(scope), "k")
    claim = await store.claim(key, fingerprint("POST", "/pay", b"", b"{}"), "t", lease_ms=1000)
    assert claim.response is not None
    assert claim.response[0] == 2
    assert StoredResponse.decode(claim.response).trace is None
