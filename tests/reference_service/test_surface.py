"""Probes, metrics, the OpenAPI document, problem+json for unknown routes, start-up checks."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from reference_service.app import create_app
from reference_service.db.migrations import NotMigrated

from tests.reference_service.conftest import WALLETS, Harness, make_settings
from tests.reference_service.helpers import claim, problem, register

pytestmark = pytest.mark.anyio


async def test_probes_answer(harness: Harness) -> None:
    """/healthz is alive; /readyz lists every dependency as ok."""
    assert (await harness.client.get("/healthz")).json() == {"status": "ok"}
    ready = (await harness.client.get("/readyz")).json()
    assert ready["status"] == "ready"
    assert set(ready["checks"]) == {
        "database",
        "idempotency_store",
        "rate_limit_store",
        "queue",
        "relayer",
    }


async def test_readyz_names_what_is_down(harness: Harness) -> None:
    """A stopped queue: 503 problem+json naming it."""
    harness.queue.closed = True
    response = await harness.client.get("/readyz")
    body = problem(response, 503)
    assert body["checks"]["queue"].startswith("down")
    assert "queue" in body["detail"]
    assert body["checks"]["database"] == "ok"


async def test_metrics_and_probes_never_spend_a_users_quota(harness: Harness) -> None:
    """Scrapes and probes carry no register or claim tier; /metrics carries none at all."""
    metrics = await harness.client.get("/metrics")
    assert "ratelimit-policy" not in metrics.headers
    health = await harness.client.get("/healthz")
    assert health.headers["ratelimit-policy"] == '"health";q=600;w=60'
    for _ in range(5):
        await harness.client.get("/metrics")
        await harness.client.get("/healthz")
    registered = await register(harness.client, WALLETS[0])
    assert registered.headers["ratelimit"].startswith('"register";r=4;')


async def test_domain_metrics_are_exposed(harness: Harness) -> None:
    """Intents by type and status, settlement durations, queue depth, relayer balance."""
    await register(harness.client, WALLETS[0])
    await claim(harness.client, WALLETS[0], "1")
    harness.clock.advance(2)
    await harness.drain()
    text = (await harness.client.get("/metrics")).text
    get = harness.registry.get_sample_value
    assert get("bastion_service_intents", {"type": "claim", "status": "SETTLED"}) == 1
    assert get("bastion_service_settlement_duration_seconds_count", {"type": "claim"}) == 1
    assert get("bastion_service_settlement_duration_seconds_sum", {"type": "claim"}) == 2
    assert get("bastion_service_queue_jobs", {"queue": "intent-queue", "state": "completed"}) == 1
    assert 0 < (get("bastion_service_relayer_balance_eth") or 0) < 10
    assert 'bastion_http_requests_total{method="POST",route="/api/claim/record"' in text


async def test_openapi_and_docs(harness: Harness) -> None:
    """/openapi.json describes the surface; /docs serves the interactive page."""
    spec = (await harness.client.get("/openapi.json")).json()
    assert {
        "/api/register",
        "/api/claim/prepare",
        "/api/claim/record",
        "/api/v2/claims",
        "/api/v2/payouts/batch",
        "/api/commerce/webhook",
        "/api/admin/dlq",
        "/api/admin/dlq/{job_id}/retry",
    } <= set(spec["paths"])
    docs = await harness.client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


async def test_unknown_routes_and_methods_are_problems(harness: Harness) -> None:
    """404 and 405 are problem+json like every other error."""
    problem(await harness.client.get("/nope"), 404)
    problem(await harness.client.get("/api/register"), 405)


async def test_the_service_refuses_an_unmigrated_database(tmp_path: object) -> None:
    """Start-up on an empty database fails with the one-line hint to migrate."""
    url = f"sqlite+aiosqlite:///{tmp_path}/empty.db"
    app = create_app(make_settings(url), registry=CollectorRegistry(), run_jobs=False)
    with pytest.raises(NotMigrated, match="run `bastion-service migrate`"):
        async with app.router.lifespan_context(app):
            pass


async def test_the_service_starts_with_its_job_runner(database_url: str) -> None:
    """The lifespan `serve` runs: migrated check, programs seeded, the queue loop running."""
    app = create_app(make_settings(database_url), registry=CollectorRegistry())
    async with app.router.lifespan_context(app):
        service = app.state.service
        await service.queue.ping()
        async with service.db.read() as repo:
            assert [p.id for p in await repo.programs()] == ["demo"]
    assert service.queue.closed
