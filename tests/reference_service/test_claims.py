"""Claims: prepare, record (one transaction with its idempotency record), intents, tier."""

from __future__ import annotations

from typing import Any

import pytest
from reference_service.db.models import Intent, bastion_tables
from sqlalchemy import func, select

from tests.reference_service.conftest import WALLETS, Harness
from tests.reference_service.helpers import SIGNATURE, claim, key, prepare, problem, register

pytestmark = pytest.mark.anyio


async def test_prepare_returns_the_transactions_to_sign(harness: Harness) -> None:
    """200 with a claim id, the amount as a decimal string and a call to the distributor."""
    await register(harness.client, WALLETS[0])
    response = await prepare(harness.client, WALLETS[0].lower(), "12.345678")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["wallet"] == WALLETS[0]
    assert body["amount"] == "12.345678"
    assert body["nonce"] == 1
    [tx] = body["transactions"]
    assert tx["data"].startswith("0x")
    assert tx["chain_id"] == 31337


@pytest.mark.parametrize("amount", [12.5, 12, "12.1234567", "0", "-1", "1e3", "01", ""])
async def test_prepare_refuses_amounts_that_are_not_decimal_strings(
    harness: Harness, amount: Any
) -> None:
    """Floats, integers, too many decimals, zero or exponents: 422 naming /amount."""
    await register(harness.client, WALLETS[0])
    response = await harness.client.post(
        "/api/claim/prepare",
        json={"wallet": WALLETS[0], "program_id": "demo", "amount": amount},
        headers=key(),
    )
    assert problem(response, 422)["errors"][0]["pointer"] == "/amount"


async def test_prepare_unknown_wallet_or_program_is_404(harness: Harness) -> None:
    """An unregistered wallet and an unknown program are 404 problems."""
    unknown_wallet = await prepare(harness.client, WALLETS[1])
    assert problem(unknown_wallet, 404)["type"].endswith("wallet-not-registered")
    await register(harness.client, WALLETS[1])
    unknown_program = await prepare(harness.client, WALLETS[1], program="nope")
    assert problem(unknown_program, 404)["type"].endswith("program-not-found")


async def test_prepare_over_the_budget_is_409(harness: Harness) -> None:
    """The demo program has 1000 to give: 1000.000001 is refused with what is left."""
    await register(harness.client, WALLETS[0])
    body = problem(await prepare(harness.client, WALLETS[0], "1000.000001"), 409)
    assert body["remaining"] == "1000"
    assert (await prepare(harness.client, WALLETS[0], "1000")).status_code == 200


async def test_record_enqueues_an_intent_that_settles(harness: Harness) -> None:
    """202 PENDING; once its job runs, SETTLED with a tx hash and two ledger entries."""
    await register(harness.client, WALLETS[0])
    intent = await claim(harness.client, WALLETS[0], "7.5")
    assert intent["status"] == "PENDING"
    assert intent["amount"] == "7.5"
    assert await harness.drain() == 1
    settled = (await harness.client.get(f"/api/intents/{intent['id']}")).json()
    assert settled["status"] == "SETTLED"
    assert settled["attempts"] == 1
    async with harness.service.db.read() as repo:
        entries = await repo.ledger("demo")
    assert sorted(e.amount_units for e in entries) == [-7_500_000, 7_500_000]


async def test_record_commits_the_intent_and_the_stored_response_together(
    harness: Harness,
) -> None:
    """The record route's response is in bastion's table when its intent is: a retry replays."""
    await register(harness.client, WALLETS[0])
    prepared = (await prepare(harness.client, WALLETS[0])).json()
    body = {"wallet": WALLETS[0], "claim_id": prepared["claim_id"], "signature": SIGNATURE}
    headers = key()
    first = await harness.client.post("/api/claim/record", json=body, headers=headers)
    engine = harness.service.db.engine
    async with engine.connect() as conn:
        records = bastion_tables.records
        stored = (
            (await conn.execute(select(records.c.response).where(records.c.response.is_not(None))))
            .scalars()
            .all()
        )
        intents = (await conn.execute(select(func.count()).select_from(Intent))).scalar_one()
    assert intents == 1
    assert any(first.content in bytes(response) for response in stored)
    again = await harness.client.post("/api/claim/record", json=body, headers=headers)
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert await harness.drain() == 1  # one job, not one per request


async def test_record_failures(harness: Harness) -> None:
    """Unknown claim 404, another wallet's claim 404, recorded twice 409, expired 409."""
    await register(harness.client, WALLETS[0])
    await register(harness.client, WALLETS[1])
    prepared = (await prepare(harness.client, WALLETS[0])).json()

    async def record(wallet: str, claim_id: str) -> Any:
        body = {"wallet": wallet, "claim_id": claim_id, "signature": SIGNATURE}
        return await harness.client.post("/api/claim/record", json=body, headers=key())

    problem(await record(WALLETS[0], "clm_missing"), 404)
    problem(await record(WALLETS[1], prepared["claim_id"]), 404)
    assert (await record(WALLETS[0], prepared["claim_id"])).status_code == 202
    assert problem(await record(WALLETS[0], prepared["claim_id"]), 409)["type"].endswith(
        "claim-already-recorded"
    )
    late = (await prepare(harness.client, WALLETS[0])).json()
    harness.clock.advance(901)
    assert problem(await record(WALLETS[0], late["claim_id"]), 409)["type"].endswith(
        "claim-expired"
    )


async def test_record_refuses_a_bad_signature(harness: Harness) -> None:
    """A signature that is not 65 bytes of hex is a 422."""
    await register(harness.client, WALLETS[0])
    prepared = (await prepare(harness.client, WALLETS[0])).json()
    body = {"wallet": WALLETS[0], "claim_id": prepared["claim_id"], "signature": "0x1234"}
    response = await harness.client.post("/api/claim/record", json=body, headers=key())
    assert problem(response, 422)["errors"][0]["pointer"] == "/signature"


async def test_unknown_intent_is_404(harness: Harness) -> None:
    """GET /api/intents/{id} of an id that does not exist: 404 problem."""
    problem(await harness.client.get("/api/intents/int_nope"), 404)
