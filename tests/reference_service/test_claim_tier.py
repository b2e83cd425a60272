"""The claim tier: 60 an hour per wallet (here RL_CLAIM_PER_HOUR=2), keyed case-insensitively."""

from __future__ import annotations

import pytest

from tests.reference_service.conftest import WALLETS, Harness
from tests.reference_service.helpers import prepare, register

pytestmark = pytest.mark.anyio


@pytest.fixture
def environ() -> dict[str, str]:
    """Two claims an hour, so the tier is reached in a few requests."""
    return {"RL_CLAIM_PER_HOUR": "2"}


async def test_claim_tier_counts_a_wallet_however_it_is_spelled(harness: Harness) -> None:
    """RL_CLAIM_PER_HOUR=2: lower case and checksummed spellings share one bucket."""
    await register(harness.client, WALLETS[0])
    spellings = [WALLETS[0], WALLETS[0].lower(), WALLETS[0]]
    statuses = [(await prepare(harness.client, w)).status_code for w in spellings]
    assert statuses == [200, 200, 429]
    other = await prepare(harness.client, WALLETS[1])
    assert other.status_code == 404  # another wallet has its own quota
