"""The double-entry ledger sums to zero per program, and a burst never overspends a budget."""

from __future__ import annotations

import anyio
import pytest

from tests.reference_service.conftest import WALLETS, Harness
from tests.reference_service.helpers import SIGNATURE, key, register

pytestmark = pytest.mark.anyio


async def test_a_burst_of_concurrent_claims_keeps_the_ledger_balanced(harness: Harness) -> None:
    """40 concurrent claims of 30 against a budget of 1000: 33 accepted, 7 refused (409);
    every accepted one settles, and each program's entries sum to 0."""
    for wallet in WALLETS:
        await register(harness.client, wallet)
    statuses: list[int] = []

    async def one(i: int) -> None:
        body = {
            "wallet": WALLETS[i % 4],
            "program_id": "demo",
            "amount": "30",
            "signature": SIGNATURE,
        }
        response = await harness.client.post("/api/v2/claims", json=body, headers=key())
        statuses.append(response.status_code)

    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(one, i)
    assert sorted(statuses) == [202] * 33 + [409] * 7
    assert await harness.drain() == 33
    async with harness.service.db.read() as repo:
        sums = await repo.ledger_sums()
        entries = await repo.ledger("demo")
        counts = await repo.intent_counts()
    assert sums == {"demo": 0}
    assert len(entries) == 66
    assert sum(e.amount_units for e in entries if e.amount_units > 0) == 990 * 10**6
    assert counts == {("claim", "SETTLED"): 33}
    await harness.client.get("/metrics")
    balance = harness.registry.get_sample_value(
        "bastion_service_ledger_balance", {"program": "demo"}
    )
    assert balance == 0
