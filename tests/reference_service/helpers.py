"""Client steps shared by the service tests."""

from __future__ import annotations

import itertools
from typing import Any

import httpx

SIGNATURE = "0x" + "ab" * 65
_keys = itertools.count(1)


def key() -> dict[str, str]:
    return {"Idempotency-Key": f"k-{next(_keys)}"}


async def register(client: httpx.AsyncClient, wallet: str) -> httpx.Response:
    response = await client.post("/api/register", json={"wallet": wallet}, headers=key())
    assert response.status_code == 201, response.text
    return response


async def prepare(
    client: httpx.AsyncClient, wallet: str, amount: str = "10", program: str = "demo"
) -> httpx.Response:
    return await client.post(
        "/api/claim/prepare",
        json={"wallet": wallet, "program_id": program, "amount": amount},
        headers=key(),
    )


async def claim(client: httpx.AsyncClient, wallet: str, amount: str = "10") -> dict[str, Any]:
    """Prepare and record a claim; the recorded intent."""
    prepared = await prepare(client, wallet, amount)
    assert prepared.status_code == 200, prepared.text
    recorded = await client.post(
        "/api/claim/record",
        json={"wallet": wallet, "claim_id": prepared.json()["claim_id"], "signature": SIGNATURE},
        headers=key(),
    )
    assert recorded.status_code == 202, recorded.text
    intent: dict[str, Any] = recorded.json()
    return intent


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The problem body of a response, checked to be RFC 9457 with that status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()
    return body
