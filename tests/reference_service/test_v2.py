"""POST /api/v2/claims and /api/v2/payouts/batch (all or nothing, the bad row named)."""

from __future__ import annotations

from typing import Any

import pytest
from reference_service.db.models import Intent, Payout
from sqlalchemy import func, select

from tests.reference_service.conftest import WALLETS, Harness
from tests.reference_service.helpers import SIGNATURE, key, problem, register

pytestmark = pytest.mark.anyio


async def _count(harness: Harness, model: Any) -> int:
    async with harness.service.db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(model))).scalar_one())


async def test_v2_claim_records_and_settles(harness: Harness) -> None:
    """One call records the claim and its intent (202); the intent settles."""
    await register(harness.client, WALLETS[0])
    body = {"wallet": WALLETS[0], "program_id": "demo", "amount": "3", "signature": SIGNATURE}
    response = await harness.client.post("/api/v2/claims", json=body, headers=key())
    assert response.status_code == 202, response.text
    result = response.json()
    assert result["claim"]["status"] == "RECORDED"
    assert result["intent"]["claim_id"] == result["claim"]["id"]
    await harness.drain()
    intent = (await harness.client.get(f"/api/intents/{result['intent']['id']}")).json()
    assert intent["status"] == "SETTLED"


async def test_v2_claim_failures(harness: Harness) -> None:
    """No key 400, unknown wallet 404, over budget 409, float amount 422."""
    body = {"wallet": WALLETS[0], "program_id": "demo", "amount": "3", "signature": SIGNATURE}
    problem(await harness.client.post("/api/v2/claims", json=body), 400)
    problem(await harness.client.post("/api/v2/claims", json=body, headers=key()), 404)
    await register(harness.client, WALLETS[0])
    over = {**body, "amount": "1000.5"}
    problem(await harness.client.post("/api/v2/claims", json=over, headers=key()), 409)
    floating = {**body, "amount": 3.0}
    problem(await harness.client.post("/api/v2/claims", json=floating, headers=key()), 422)


async def test_payout_batch_pays_every_row(harness: Harness) -> None:
    """202 with one payout and intent per row; each settles through the payout queue."""
    for wallet in WALLETS[:3]:
        await register(harness.client, wallet)
    rows = [{"wallet": w, "amount": "1.5", "reference": f"r{i}"} for i, w in enumerate(WALLETS[:3])]
    response = await harness.client.post(
        "/api/v2/payouts/batch", json={"program_id": "demo", "payouts": rows}, headers=key()
    )
    assert response.status_code == 202, response.text
    result = response.json()
    assert result["total"] == "4.5"
    assert [p["row"] for p in result["payouts"]] == [0, 1, 2]
    assert await harness.drain() == 3
    for payout in result["payouts"]:
        intent = (await harness.client.get(f"/api/intents/{payout['intent_id']}")).json()
        assert (intent["type"], intent["status"]) == ("payout", "SETTLED")


async def test_a_malformed_row_rejects_the_batch_naming_it(harness: Harness) -> None:
    """Row 2's wallet fails its checksum: 422 with ``row: 2``; nothing is written."""
    for wallet in WALLETS[:2]:
        await register(harness.client, wallet)
    rows = [
        {"wallet": WALLETS[0], "amount": "1"},
        {"wallet": WALLETS[1], "amount": "1"},
        {"wallet": WALLETS[1][:-1] + "D", "amount": "1"},
    ]
    response = await harness.client.post(
        "/api/v2/payouts/batch", json={"program_id": "demo", "payouts": rows}, headers=key()
    )
    body = problem(response, 422)
    assert body["row"] == 2
    assert "row 2" in body["detail"]
    assert await _count(harness, Payout) == 0


async def test_an_unregistered_wallet_rejects_the_batch_naming_its_row(harness: Harness) -> None:
    """Row 1's wallet is valid but unknown: 422 naming row 1, no payout, no intent."""
    await register(harness.client, WALLETS[0])
    rows = [{"wallet": WALLETS[0], "amount": "1"}, {"wallet": WALLETS[3], "amount": "1"}]
    response = await harness.client.post(
        "/api/v2/payouts/batch", json={"program_id": "demo", "payouts": rows}, headers=key()
    )
    assert problem(response, 422)["row"] == 1
    assert await _count(harness, Payout) == 0
    assert await _count(harness, Intent) == 0


async def test_a_batch_over_budget_or_for_no_program_is_refused_whole(harness: Harness) -> None:
    """The sum over the budget is 409, an unknown program 404, an empty batch 422."""
    await register(harness.client, WALLETS[0])
    rows = [{"wallet": WALLETS[0], "amount": "600"}, {"wallet": WALLETS[0], "amount": "600"}]
    post = harness.client.post
    over = await post(
        "/api/v2/payouts/batch", json={"program_id": "demo", "payouts": rows}, headers=key()
    )
    problem(over, 409)
    missing = await post(
        "/api/v2/payouts/batch", json={"program_id": "x", "payouts": rows[:1]}, headers=key()
    )
    problem(missing, 404)
    empty = await post(
        "/api/v2/payouts/batch", json={"program_id": "demo", "payouts": []}, headers=key()
    )
    problem(empty, 422)
    assert await _count(harness, Payout) == 0
