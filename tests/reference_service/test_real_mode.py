"""Real mode end to end, in process: PostgreSQL, Redis, BullMQ workers, all through HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from reference_service.webhooks import sign

from tests.reference_service.helpers import SIGNATURE, key
from tests.reference_service.real import (
    REAL,
    SECRET,
    Real,
    eventually,
    pg_template,
    pg_url,
    prefix,
    random_wallet,
    real_settings,
    redis_url,
    start_real,
)

__all__ = ["pg_template", "pg_url", "prefix", "redis_url"]  # fixtures, imported to be found

pytestmark = [*REAL, pytest.mark.anyio]


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
async def real(
    pg_url: str, redis_url: str, prefix: str, overrides: dict[str, Any]
) -> AsyncIterator[Real]:
    settings = real_settings(pg_url, redis_url, prefix, **overrides)
    async with start_real(settings, workers=True) as harness:
        yield harness


async def settled(real: Real, intent_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        intent = await real.intent(intent_id)
        return intent if intent["status"] == "SETTLED" else None

    result: dict[str, Any] = await eventually(check)
    return result


async def test_the_whole_surface_settles_on_real_servers(real: Real) -> None:
    """Register, prepare/record, v2 claim, payouts, webhook: jobs settle on BullMQ workers."""
    wallet, other = random_wallet(), random_wallet()
    await real.register(wallet)
    await real.register(other)
    prepared = await real.client.post(
        "/api/claim/prepare",
        json={"wallet": wallet, "program_id": real.program, "amount": "2.5"},
        headers=key(),
    )
    assert prepared.status_code == 200, prepared.text
    record_key = key()
    body = {"wallet": wallet, "claim_id": prepared.json()["claim_id"], "signature": SIGNATURE}
    recorded = await real.client.post("/api/claim/record", json=body, headers=record_key)
    assert recorded.status_code == 202, recorded.text
    replay = await real.client.post("/api/claim/record", json=body, headers=record_key)
    assert replay.status_code == 202
    assert replay.json() == recorded.json()
    assert replay.headers.get("idempotent-replayed") == "true"
    v2 = await real.claim(other, "1.5")
    batch = await real.client.post(
        "/api/v2/payouts/batch",
        json={"program_id": real.program, "payouts": [{"wallet": wallet, "amount": "3"}]},
        headers=key(),
    )
    assert batch.status_code == 202, batch.text
    event = json.dumps(
        {
            "event": {
                "id": f"evt_{time.time_ns()}",
                "type": "payment.succeeded",
                "data": {"program_id": real.program, "amount": "10"},
            }
        }
    ).encode()
    hook = await real.client.post(
        "/api/commerce/webhook",
        content=event,
        headers={"Commerce-Signature": sign(SECRET, event), "content-type": "application/json"},
    )
    assert hook.status_code == 200, hook.text
    assert hook.json()["status"] == "processed"
    intents = [recorded.json()["id"], v2["id"], batch.json()["payouts"][0]["intent_id"]]
    for intent_id in intents:
        done = await settled(real, intent_id)
        assert done["tx_hash"]
    async with real.service.db.read() as repo:
        assert (await repo.ledger_sums())[real.program] == 0
    ready = await real.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["checks"].values()) == {"ok"}
    metrics = (await real.client.get("/metrics")).text
    assert 'bastion_service_queue_jobs{queue="intent-queue",state="completed"}' in metrics
    assert f'bastion_service_ledger_balance{{program="{real.program}"}} 0.0' in metrics


async def test_a_job_failing_five_times_lands_in_the_dlq_and_is_retried(real: Real) -> None:
    """5 tries in all on BullMQ, then the DLQ with reason and queue; the admin retry settles."""
    wallet = random_wallet()
    await real.register(wallet)
    await real.faults(fail_rate=1.0)
    intent = await real.claim(wallet)

    async def dead() -> dict[str, Any] | None:
        page = await real.dlq()
        return page if page["total"] == 1 else None

    page = await eventually(dead)
    [job] = page["items"]
    assert job["original_queue"] == "intent-queue"
    assert job["attempts_made"] == 5
    assert "simulated failure" in job["reason"]
    assert job["data"] == {"intent_id": intent["id"]}
    failed = await real.intent(intent["id"])
    assert failed["status"] == "FAILED"
    assert failed["attempts"] == 5
    await real.faults(fail_rate=0.0)
    retried = await real.client.post(f"/api/admin/dlq/{job['id']}/retry", headers=real.admin)
    assert retried.status_code == 202, retried.text
    assert retried.json()["queue"] == "intent-queue"
    assert (await real.dlq())["total"] == 0
    again = await real.client.post(f"/api/admin/dlq/{job['id']}/retry", headers=real.admin)
    assert again.status_code == 404
    await settled(real, intent["id"])


@pytest.mark.parametrize(
    "overrides",
    [{"sweep_every_seconds": 0.5, "stuck_after_seconds": 1.0, "job_timeout_seconds": 120.0}],
)
async def test_the_sweeper_catches_an_intent_stuck_in_processing(real: Real) -> None:
    """A send that hangs leaves its intent PROCESSING; the scheduled sweep fails it into
    the DLQ, the hung try cannot settle it afterwards, and an operator's retry does."""
    wallet = random_wallet()
    await real.register(wallet)
    await real.faults(hang_rate=1.0)
    intent = await real.claim(wallet)

    async def swept() -> dict[str, Any] | None:
        page = await real.dlq()
        return page if page["total"] == 1 else None

    [job] = (await eventually(swept))["items"]
    assert job["reason"] == "stuck in PROCESSING"
    assert job["original_queue"] == "intent-queue"
    failed = await real.intent(intent["id"])
    assert failed["status"] == "FAILED"
    assert "processing timeout" in failed["last_error"]
    await real.faults()
    retried = await real.client.post(f"/api/admin/dlq/{job['id']}/retry", headers=real.admin)
    assert retried.status_code == 202
    await settled(real, intent["id"])
    async with real.service.db.read() as repo:
        entries = [e for e in await repo.ledger(real.program) if e.intent_id == intent["id"]]
    assert len(entries) == 2


@pytest.mark.parametrize("overrides", [{"reconcile_every_seconds": 0.5}])
async def test_the_reconciler_reports_in_readyz_and_metrics(real: Real) -> None:
    """The scheduled reconciler checks ledger and chain; /readyz shows it without failing."""
    wallet = random_wallet()
    await real.register(wallet)
    intent = await real.claim(wallet)
    await settled(real, intent["id"])

    async def reconciled() -> dict[str, Any] | None:
        report = (await real.client.get("/readyz")).json()["details"]["reconciliation"]
        return report if isinstance(report, dict) and report["settled_intents"] >= 1 else None

    report = await eventually(reconciled)
    assert report["mismatches"] == 0
    # a settled intent whose transfer the chain never saw: a mismatch, reported, still ready
    async with real.service.db.write() as repo:
        forged = await repo.add_intent(
            type=__import__(
                "reference_service.db.models", fromlist=["IntentType"]
            ).IntentType.CLAIM,
            program_id=real.program,
            wallet=intent["wallet"],
            amount_units=1,
            now=real.service.now(),
        )
        forged.status = "SETTLED"
        forged.tx_hash = "0x" + "00" * 32

    async def mismatch() -> dict[str, Any] | None:
        report = (await real.client.get("/readyz")).json()["details"]["reconciliation"]
        return report if forged.id in report["unmatched_intents"] else None

    report = await eventually(mismatch)
    assert report["mismatches"] >= 1
    assert (await real.client.get("/readyz")).status_code == 200
    metrics = (await real.client.get("/metrics")).text
    assert 'bastion_service_reconciliation_mismatches{check="chain"} 1.0' in metrics
