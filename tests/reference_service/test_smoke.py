"""Quick end-to-end."""

from __future__ import annotations

import pytest

from tests.reference_service.conftest import WALLETS, Harness
from tests.reference_service.helpers import claim, register

pytestmark = pytest.mark.anyio


async def test_claim_settles(harness: Harness) -> None:
    """A recorded claim settles once its job runs."""
    await register(harness.client, WALLETS[0])
    intent = await claim(harness.client, WALLETS[0], "12.5")
    assert intent["status"] == "PENDING"
    assert await harness.drain() == 1
    got = await harness.client.get(f"/api/intents/{intent['id']}")
    assert got.json()["status"] == "SETTLED", got.text
