"""POST /api/register: EIP-55 wallets, the relayer's tx hash, keys, replays and the tier."""

from __future__ import annotations

import pytest

from tests.reference_service.conftest import WALLETS, Harness
from tests.reference_service.helpers import key, problem

pytestmark = pytest.mark.anyio


async def test_register_returns_the_registration_and_tx_hash(harness: Harness) -> None:
    """201 with the checksummed wallet and the relayer's transaction hash."""
    response = await harness.client.post(
        "/api/register", json={"wallet": WALLETS[0].lower()}, headers=key()
    )
    assert response.status_code == 201
    body = response.json()
    assert body["wallet"] == WALLETS[0]
    assert body["tx_hash"].startswith("0x")
    assert len(body["tx_hash"]) == 66
    assert harness.chain.receipt(body["tx_hash"]) is not None


@pytest.mark.parametrize(
    "wallet",
    [
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD",  # one letter's case flipped
        "0x5AAEB6053F3E94C9B9A09F33669435E7EF1BEAED",  # all upper case
        "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beae",  # 39 digits
        "5aaeb6053f3e94c9b9a09f33669435e7ef1beaed",  # no 0x
        "0xzzaeb6053f3e94c9b9a09f33669435e7ef1beaed",
        "",
    ],
)
async def test_register_refuses_addresses_that_are_not_eip55(harness: Harness, wallet: str) -> None:
    """A bad checksum, the wrong length or not hex: 422 problem naming the field."""
    response = await harness.client.post("/api/register", json={"wallet": wallet}, headers=key())
    body = problem(response, 422)
    assert body["errors"][0]["pointer"] == "/wallet"


@pytest.mark.parametrize(
    ("content", "status"),
    [(b"{not json", 400), (b"[]", 422), (b'{"wallet": 12}', 422), (b"{}", 422)],
)
async def test_register_bad_bodies_are_problems(
    harness: Harness, content: bytes, status: int
) -> None:
    """Malformed JSON is a 400, a wrong shape a 422; never a 500."""
    response = await harness.client.post(
        "/api/register",
        content=content,
        headers={**key(), "content-type": "application/json"},
    )
    problem(response, status)


async def test_register_requires_an_idempotency_key(harness: Harness) -> None:
    """No key: bastion's 400, and nothing is registered."""
    response = await harness.client.post("/api/register", json={"wallet": WALLETS[0]})
    problem(response, 400)
    async with harness.service.db.read() as repo:
        assert await repo.wallet(WALLETS[0]) is None


async def test_register_replays_and_refuses_a_second_registration(harness: Harness) -> None:
    """The same key replays byte for byte; another key for the same wallet is a 409."""
    headers = key()
    first = await harness.client.post("/api/register", json={"wallet": WALLETS[0]}, headers=headers)
    again = await harness.client.post("/api/register", json={"wallet": WALLETS[0]}, headers=headers)
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    other = await harness.client.post("/api/register", json={"wallet": WALLETS[0]}, headers=key())
    assert problem(other, 409)["type"].endswith("already-registered")
    assert harness.chain.sends == 1


async def test_a_relayer_failure_is_a_503_that_can_be_retried(harness: Harness) -> None:
    """A failed send answers 503; the key is released, so the retry registers."""
    harness.chain.fail_rate = 1.0
    headers = key()
    failed = await harness.client.post(
        "/api/register", json={"wallet": WALLETS[1]}, headers=headers
    )
    assert "retry-after" in failed.headers
    problem(failed, 503)
    harness.chain.fail_rate = 0.0
    retried = await harness.client.post(
        "/api/register", json={"wallet": WALLETS[1]}, headers=headers
    )
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers


async def test_register_is_limited_to_five_an_hour_per_address(harness: Harness) -> None:
    """The register preset: the sixth attempt within the hour from one address gets 429."""
    statuses = []
    for i in range(6):
        response = await harness.client.post(
            "/api/register", json={"wallet": WALLETS[i % 4]}, headers=key()
        )
        statuses.append(response.status_code)
    assert statuses[5] == 429
    assert 'register";q=5;w=3600' in response.headers["ratelimit-policy"]
    assert problem(response, 429)["violated-policies"] == ["register"]
