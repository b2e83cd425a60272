"""Redis, then PostgreSQL, stopped under load and started again: the real-mode app answers
no 5xx but a clear 503 where it cannot work, keeps serving what it can, and recovers by
itself once the server is back; the added latency while down is printed (``-s``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.reference_service.faults import Phase, Servers, private_servers
from tests.reference_service.helpers import SIGNATURE, key
from tests.reference_service.real import Real, eventually, random_wallet, real_settings, start_real

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.anyio,
]

ROUNDS = 6
LIMITS = {"RL_CLAIM_PER_HOUR": "1000000", "RL_HEALTH_PER_MIN": "1000000"}


async def load(real: Real, wallet: str, intent_id: str, phase: Phase) -> None:
    """Rounds of a claim, an intent read, a liveness and a readiness probe, concurrently."""

    async def one(route: str, call: Callable[[], object]) -> None:
        started = time.perf_counter()
        response = await call()  # type: ignore[misc]
        assert isinstance(response, httpx.Response)
        phase.record(route, response.status_code, started)
        if response.status_code >= 400:
            assert response.headers["content-type"] == "application/problem+json", response.text

    claim = {"wallet": wallet, "program_id": real.program, "amount": "1", "signature": SIGNATURE}
    client = real.client
    for _ in range(ROUNDS):
        await asyncio.gather(
            one("claim", lambda: client.post("/api/v2/claims", json=claim, headers=key())),
            one("intent", lambda: client.get(f"/api/intents/{intent_id}")),
            one("healthz", lambda: client.get("/healthz")),
            one("readyz", lambda: client.get("/readyz")),
        )


async def recovered(real: Real, wallet: str) -> bool:
    """A claim goes through again and readiness is back: the same app, nothing restarted.

    Until then a 503 is the honest answer (the stores' circuit breakers probe the server again
    only after their cool-down); any other 5xx is a failure."""
    body = {"wallet": wallet, "program_id": real.program, "amount": "1", "signature": SIGNATURE}
    response = await real.client.post("/api/v2/claims", json=body, headers=key())
    assert response.status_code < 500 or response.status_code == 503, response.text
    ready = await real.client.get("/readyz")
    assert ready.status_code in (200, 503), ready.text
    return response.status_code == 202 and ready.status_code == 200


async def outage(
    servers: Servers, stop: Callable[[], None], start: Callable[[], None], name: str
) -> list[Phase]:
    settings = real_settings(servers.database_url, servers.redis.url, "faults")
    async with start_real(settings, workers=False, environ=LIMITS) as real:
        wallet = random_wallet()
        await real.register(wallet)
        intent = await real.claim(wallet)
        before, down, after = Phase(f"{name} up"), Phase(f"{name} down"), Phase(f"{name} back")
        await load(real, wallet, intent["id"], before)
        stop()
        await load(real, wallet, intent["id"], down)
        start()
        await eventually(lambda: recovered(real, wallet), within=120, every=0.2)
        await load(real, wallet, intent["id"], after)
    phases = [before, down, after]
    print("\n" + "\n".join(phase.summary() for phase in phases))
    for phase in phases:
        assert not [code for code in phase.codes() if code >= 500 and code != 503], phase.summary()
    assert before.codes() == {200, 202}, before.summary()
    assert after.codes() == {200, 202}, after.summary()
    assert down.statuses[("healthz", 200)] == ROUNDS  # liveness never depends on a server
    assert down.statuses[("readyz", 503)] == ROUNDS  # readiness says what is down
    return phases


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    with private_servers(tmp_path) as started:
        yield started


async def test_redis_stopped_and_restarted_under_load(servers: Servers) -> None:
    """Redis down: rate limits fail open as configured (claims and reads keep working), the
    queue's enqueue failure after the commit is no 5xx, readiness is 503; Redis back: the
    same app serves normally."""
    _, down, _ = await outage(servers, servers.redis.stop, servers.redis.start, "redis")
    assert down.statuses[("intent", 200)] == ROUNDS  # reads need PostgreSQL only
    assert down.statuses[("claim", 202)] == ROUNDS  # committed; the reconciler enqueues


async def test_postgres_stopped_and_restarted_under_load(servers: Servers) -> None:
    """PostgreSQL down: keyed writes fail closed (503, idempotency store unavailable), reads
    are 503 naming the database, readiness is 503; PostgreSQL back: the app recovers."""
    _, down, _ = await outage(servers, servers.postgres.stop, servers.postgres.start, "postgres")
    assert down.statuses[("claim", 503)] == ROUNDS
    assert down.statuses[("intent", 503)] == ROUNDS
