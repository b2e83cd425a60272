"""A frozen Redis through the whole stack: the circuit breaker opens after N failures, then
every policy answers without touching Redis; resumed, one probe closes it.

The server is a private ``redis-server`` frozen with SIGSTOP (it accepts connections and never
answers: the costliest outage). The breaker runs on an injected clock, so its cool-down passes
when the test says so; nothing here measures time.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from bastion.stores._breaker import CircuitBreaker
from bastion.stores._redis import RedisStore
from tests.conftest import FakeClock
from tests.integration.test_outage import Outage, assert_degraded_service, assert_normal_service
from tests.stores.redis_support import private_redis

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.anyio]

FAILURES = 3


class Counting:
    """Wraps the client's EVALSHA to count the calls that reach Redis."""

    def __init__(self, store: RedisStore) -> None:
        self.calls = 0
        client = store.client
        original = client.evalsha

        async def evalsha(*args: Any) -> Any:
            self.calls += 1
            return await original(*args)

        client.evalsha = evalsha


async def test_frozen_redis_opens_the_breaker_and_a_probe_closes_it(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Frozen: N failures open the breaker, then no request reaches Redis; resumed: the
    first call after the cool-down probes and closes it, and service is normal."""
    breaker_clock = FakeClock()
    breaker = CircuitBreaker(failures=FAILURES, reset_after=5.0, clock=breaker_clock)
    with private_redis(tmp_path) as server:
        assert server.process is not None
        store = RedisStore(url=server.url, clock=clock, timeout=0.2, breaker=breaker)
        counting = Counting(store)
        try:
            outage = Outage(store)
            await assert_normal_service(outage, "198.51.100.1")

            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                async with outage.client("198.51.100.2") as client:
                    for _ in range(FAILURES):  # each is one hit that times out: fail open
                        assert breaker.state == "closed"
                        response = await client.post("/open")
                        assert response.status_code == 200
                        assert "ratelimit" not in response.headers
                assert breaker.state == "open"

                reached = counting.calls
                await assert_degraded_service(outage, "198.51.100.3", "198.51.100.1/orders")
                assert counting.calls == reached  # every answer came from the policy at once
                assert breaker.state == "open"
            finally:
                os.kill(server.process.pid, signal.SIGCONT)

            breaker_clock.advance(5.0)
            assert breaker.state == "half_open"
            await assert_normal_service(outage, "198.51.100.4")
            assert breaker.state == "closed"
        finally:
            await store.aclose()
