"""The reference service answers as a client of the quick start would expect."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from reference_service.app import create_app

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """A client for a fresh service with its own registry."""
    app = create_app(registry=CollectorRegistry())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        yield client


async def test_register_is_idempotent(client: httpx.AsyncClient) -> None:
    """The quick start's curl: a retry replays the registration instead of making another."""
    headers = {"Idempotency-Key": "6f0c1b2e"}
    first = await client.post("/api/register", json={"wallet": "0xabc"}, headers=headers)
    again = await client.post("/api/register", json={"wallet": "0xabc"}, headers=headers)
    assert first.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert 'register";q=5;w=3600' in first.headers["ratelimit-policy"]


async def test_register_requires_a_key_and_a_wallet(client: httpx.AsyncClient) -> None:
    """No key is a 400; a body without a wallet is the handler's own 422 problem."""
    missing = await client.post("/api/register", json={"wallet": "0xabc"})
    invalid = await client.post("/api/register", json={}, headers={"Idempotency-Key": "k"})
    assert missing.status_code == 400
    assert invalid.status_code == 422
    assert invalid.headers["content-type"] == "application/problem+json"


async def test_register_is_rate_limited_per_address(client: httpx.AsyncClient) -> None:
    """The register preset allows 5 per hour per address; the sixth gets 429."""
    statuses = [
        (
            await client.post(
                "/api/register", json={"wallet": f"w{i}"}, headers={"Idempotency-Key": f"k{i}"}
            )
        ).status_code
        for i in range(6)
    ]
    assert statuses == [201] * 5 + [429]


async def test_health_and_metrics(client: httpx.AsyncClient) -> None:
    """Probes answer, and /metrics counts requests by route template and decisions."""
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    await client.post("/api/register", json={"wallet": "w"}, headers={"Idempotency-Key": "m"})
    text = (await client.get("/metrics")).text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    route = (("method", "POST"), ("route", "/api/register"), ("status", "201"))
    assert samples[("bastion_http_requests_total", route)] == 1
    assert samples[("bastion_idempotency_decisions_total", (("outcome", "stored"),))] == 1
