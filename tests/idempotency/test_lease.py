"""The lease registry renews long requests only, stops when told, and survives new loops."""

from __future__ import annotations

import asyncio

import pytest

from bastion.idempotency._lease import LeaseRegistry

INTERVAL = 0.02


class Renewals:
    """Counts renewals and answers True until told to stop."""

    def __init__(self, answers: bool = True) -> None:
        self.calls = 0
        self.answers = answers

    async def __call__(self) -> bool:
        self.calls += 1
        return self.answers


async def run_for(registry: LeaseRegistry, renew: Renewals, seconds: float) -> None:
    holder = object()
    leases = registry.add(holder, renew)
    assert leases is not None
    try:
        await asyncio.sleep(seconds)
    finally:
        leases.remove(holder)


def test_quick_requests_are_never_renewed() -> None:
    """A request that ends before a sweep found it costs no renewal at all."""
    registry, renew = LeaseRegistry(INTERVAL), Renewals()
    asyncio.run(run_for(registry, renew, INTERVAL / 4))
    assert renew.calls == 0


def test_long_requests_are_renewed_until_they_end() -> None:
    """A request outliving the sweeps is renewed about once an interval, and not after."""
    registry, renew = LeaseRegistry(INTERVAL), Renewals()

    async def scenario() -> int:
        await run_for(registry, renew, INTERVAL * 10)
        after_end = renew.calls
        await asyncio.sleep(INTERVAL * 5)
        assert renew.calls == after_end
        return after_end

    assert asyncio.run(scenario()) >= 3


def test_a_lost_lease_is_not_renewed_again() -> None:
    """Once a renewal says the lease is gone, sweeps leave that request alone."""
    registry, renew = LeaseRegistry(INTERVAL), Renewals(answers=False)
    asyncio.run(run_for(registry, renew, INTERVAL * 10))
    assert renew.calls == 1


@pytest.mark.parametrize("loops", [2, 3])
def test_each_event_loop_gets_its_own_sweeps(loops: int) -> None:
    """One middleware used from successive event loops keeps renewing on each of them."""
    registry = LeaseRegistry(INTERVAL)
    for _ in range(loops):
        renew = Renewals()
        asyncio.run(run_for(registry, renew, INTERVAL * 6))
        assert renew.calls >= 2
