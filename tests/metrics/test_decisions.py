"""Decision metrics: what bastion's middleware decided, counted through `PrometheusObserver`."""

from __future__ import annotations

import anyio
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bastion import (
    IdempotencyMiddleware,
    IdempotencySettings,
    MetricsMiddleware,
    MultiObserver,
    Observer,
    PrometheusObserver,
    StoreUnavailable,
)
from bastion._asgi import ANSWERED_SCOPE_KEY, send_problem
from bastion.metrics import BASTION_LABEL, UNMATCHED_LABEL
from bastion.observe import timed
from bastion.stores import MemoryStore
from bastion.typing import ASGIApp, Receive, Scope, Send
from tests.metrics.conftest import client, value

pytestmark = pytest.mark.anyio

REQUESTS = "bastion_http_requests_total"
IDEMPOTENCY = "bastion_idempotency_decisions_total"
RATELIMIT = "bastion_ratelimit_decisions_total"


def payments_app(release: anyio.Event | None = None) -> Starlette:
    async def pay(request: Request) -> Response:
        if release is not None:
            await release.wait()
        return JSONResponse({"paid": (await request.json())["amount"]}, status_code=201)

    return Starlette(routes=[Route("/payments/{account}", pay, methods=["POST"])])


def protected(app: ASGIApp, registry: CollectorRegistry) -> MetricsMiddleware:
    """MetricsMiddleware outermost, then IdempotencyMiddleware reporting to Prometheus."""
    idempotent = IdempotencyMiddleware(
        app,
        store=MemoryStore(),
        settings=IdempotencySettings(require_key=("/payments/*",)),
        observer=PrometheusObserver(registry=registry),
    )
    return MetricsMiddleware(idempotent, registry=registry)


def requests(registry: CollectorRegistry, route: str, status: int) -> float:
    return value(registry, REQUESTS, method="POST", route=route, status=str(status))


async def test_idempotency_answers_are_counted_under_the_bastion_label(
    registry: CollectorRegistry,
) -> None:
    """400, 422 and replays answered by IdempotencyMiddleware are counted, apart from 404s."""
    app = protected(payments_app(), registry)
    route = "/payments/{account}"
    async with client(app) as c:
        key = {"idempotency-key": "k-1"}
        first = await c.post("/payments/a", json={"amount": 5}, headers=key)
        replay = await c.post("/payments/a", json={"amount": 5}, headers=key)
        mismatch = await c.post("/payments/a", json={"amount": 6}, headers=key)
        missing = await c.post("/payments/a", json={"amount": 5})
        invalid = await c.post("/payments/a", json={"amount": 5}, headers={"idempotency-key": ""})
        unmatched = await c.post("/nowhere", json={}, headers={"idempotency-key": "k-2"})
    assert [first.status_code, replay.status_code, mismatch.status_code] == [201, 201, 422]
    assert [missing.status_code, invalid.status_code, unmatched.status_code] == [400, 400, 404]
    assert replay.headers["idempotent-replayed"] == "true"

    assert requests(registry, route, 201) == 1
    assert requests(registry, BASTION_LABEL, 201) == 1  # the replay
    assert requests(registry, BASTION_LABEL, 422) == 1
    assert requests(registry, BASTION_LABEL, 400) == 2
    assert requests(registry, UNMATCHED_LABEL, 404) == 1
    for outcome, count in [
        ("stored", 2),  # the 404 is stored too: it is the app's answer for that key
        ("replayed", 1),
        ("payload_mismatch", 1),
        ("missing_key", 1),
        ("invalid_key", 1),
        ("conflict_in_flight", 0),
    ]:
        assert value(registry, IDEMPOTENCY, outcome=outcome) == count, outcome


async def test_conflict_in_flight_is_counted(registry: CollectorRegistry) -> None:
    """A duplicate arriving while the first runs gets 409, counted as conflict_in_flight."""
    release = anyio.Event()
    app = protected(payments_app(release), registry)
    statuses: list[int] = []
    async with client(app) as c:

        async def pay() -> None:
            response = await c.post(
                "/payments/a", json={"amount": 1}, headers={"idempotency-key": "same"}
            )
            statuses.append(response.status_code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pay)
            await anyio.wait_all_tasks_blocked()
            await pay()
            release.set()
    assert statuses == [409, 201]
    assert requests(registry, BASTION_LABEL, 409) == 1
    assert requests(registry, "/payments/{account}", 201) == 1
    assert value(registry, IDEMPOTENCY, outcome="conflict_in_flight") == 1


def test_every_idempotency_outcome_starts_at_zero(registry: CollectorRegistry) -> None:
    """Each known outcome is exported from zero, so the first one shows up in rate()."""
    PrometheusObserver(registry=registry)
    for outcome in ("stored", "replayed", "conflict_in_flight", "payload_mismatch", "released"):
        assert registry.get_sample_value(IDEMPOTENCY, {"outcome": outcome}) == 0


def test_rate_limit_decisions_by_tier(registry: CollectorRegistry) -> None:
    """Rate-limit decisions are counted per tier and outcome."""
    observer = PrometheusObserver(registry=registry)
    scope: Scope = {"type": "http"}
    for _ in range(3):
        observer.rate_limit(scope, "burst", "allowed")
    observer.rate_limit(scope, "burst", "limited")
    observer.rate_limit(scope, "daily", "store_error")
    assert value(registry, RATELIMIT, tier="burst", outcome="allowed") == 3
    assert value(registry, RATELIMIT, tier="burst", outcome="limited") == 1
    assert value(registry, RATELIMIT, tier="daily", outcome="store_error") == 1


class DenyingLimiter:
    """A stand-in for a rate limiter: reports its tiers through the observer and answers 429."""

    def __init__(self, app: ASGIApp, *, observer: Observer) -> None:
        self.app = app
        self.observer = observer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"].endswith("/free"):
            self.observer.rate_limit(scope, "burst", "allowed")
            await self.app(scope, receive, send)
            return
        self.observer.rate_limit(scope, "burst", "allowed")
        self.observer.rate_limit(scope, "daily", "limited")
        scope[ANSWERED_SCOPE_KEY] = "ratelimit"
        await send_problem(send, 429, "rate-limited", "Too many requests", "slow down")


async def test_rate_limited_answers_are_counted(registry: CollectorRegistry) -> None:
    """A 429 from a bastion middleware is counted under the bastion label, with its tiers."""
    limiter = DenyingLimiter(payments_app(), observer=PrometheusObserver(registry=registry))
    app = MetricsMiddleware(limiter, registry=registry)
    async with client(app) as c:
        assert (await c.post("/payments/a", json={"amount": 1})).status_code == 429
        assert (await c.post("/payments/free", json={"amount": 1})).status_code == 201
    assert requests(registry, BASTION_LABEL, 429) == 1
    assert requests(registry, "/payments/{account}", 201) == 1
    assert value(registry, RATELIMIT, tier="burst", outcome="allowed") == 2
    assert value(registry, RATELIMIT, tier="daily", outcome="limited") == 1


async def test_store_calls_are_timed_and_errors_counted(registry: CollectorRegistry) -> None:
    """`timed` reports each store call's latency, and failures count as errors too."""
    observer = PrometheusObserver(registry=registry)

    async def works() -> int:
        return 1

    async def fails() -> int:
        raise StoreUnavailable("down")

    assert await timed(observer, "redis", "claim", works()) == 1
    with pytest.raises(StoreUnavailable):
        await timed(observer, "redis", "claim", fails())
    labels = {"backend": "redis", "operation": "claim"}
    assert value(registry, "bastion_store_operation_duration_seconds_count", **labels) == 2
    assert value(registry, "bastion_store_errors_total", **labels) == 1
    assert value(registry, "bastion_store_operation_duration_seconds_bucket", le="0.0001", **labels)


async def test_idempotency_store_latency_per_operation(registry: CollectorRegistry) -> None:
    """The idempotency middleware's claim and complete calls show up per backend."""
    app = protected(payments_app(), registry)
    async with client(app) as c:
        await c.post("/payments/a", json={"amount": 1}, headers={"idempotency-key": "x"})
    for operation in ("claim", "complete"):
        labels = {"backend": "memory", "operation": operation}
        assert value(registry, "bastion_store_operation_duration_seconds_count", **labels) == 1
        assert value(registry, "bastion_store_errors_total", **labels) == 0


def test_multi_observer_feeds_every_observer(registry: CollectorRegistry) -> None:
    """Through MultiObserver, each decision reaches every registry."""
    other = CollectorRegistry()
    both = MultiObserver(
        [PrometheusObserver(registry=registry), PrometheusObserver(registry=other)]
    )
    both.idempotency({"type": "http"}, "released")
    both.store_call("sql", "release", 0.01, error=False)
    for r in (registry, other):
        assert value(r, IDEMPOTENCY, outcome="released") == 1
        labels = {"backend": "sql", "operation": "release"}
        assert value(r, "bastion_store_operation_duration_seconds_count", **labels) == 1
