"""The circuit breaker's state machine, on an injected clock: no sleeping, no real store."""

from __future__ import annotations

import anyio
import pytest

from bastion.exceptions import ConfigurationError, StoreError, StoreUnavailable
from bastion.stores._breaker import CircuitBreaker
from tests.conftest import FakeClock

pytestmark = pytest.mark.anyio


class Backend:
    """A store call that fails or succeeds as told, counting how often it was reached."""

    def __init__(self) -> None:
        self.calls = 0
        self.error: BaseException | None = None

    async def __call__(self) -> str:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return "ok"


async def _fail(breaker: CircuitBreaker, backend: Backend, times: int) -> None:
    for _ in range(times):
        with pytest.raises(StoreUnavailable):
            await breaker.call(backend)


async def test_consecutive_failures_open_it_and_calls_then_skip_the_store() -> None:
    """N consecutive failures open the breaker; then calls fail without reaching the store."""
    clock = FakeClock()
    breaker = CircuitBreaker(failures=3, reset_after=2.0, clock=clock)
    backend = Backend()
    backend.error = StoreUnavailable("down")
    await _fail(breaker, backend, 2)
    assert breaker.state == "closed"
    await _fail(breaker, backend, 1)
    assert breaker.state == "open"
    reached = backend.calls
    for _ in range(10):
        with pytest.raises(StoreUnavailable, match="circuit breaker open"):
            await breaker.call(backend)
    with pytest.raises(StoreUnavailable):
        breaker.check()
    assert backend.calls == reached


async def test_a_success_resets_the_count() -> None:
    """Failures must be consecutive: one success in between starts the count again."""
    breaker = CircuitBreaker(failures=3, clock=FakeClock())
    backend = Backend()
    backend.error = StoreUnavailable("blip")
    await _fail(breaker, backend, 2)
    backend.error = None
    assert await breaker.call(backend) == "ok"
    backend.error = StoreUnavailable("blip")
    await _fail(breaker, backend, 2)
    assert breaker.state == "closed"


async def test_after_the_cool_down_one_probe_closes_it_on_success() -> None:
    """Half-open: one call probes the store; its success closes the breaker."""
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, reset_after=2.0, clock=clock)
    backend = Backend()
    backend.error = StoreUnavailable("down")
    await _fail(breaker, backend, 1)
    clock.advance(1.9)
    assert breaker.state == "open"
    clock.advance(0.1)
    assert breaker.state == "half_open"
    backend.error = None
    assert await breaker.call(backend) == "ok"
    assert breaker.state == "closed"


async def test_a_failed_probe_opens_it_for_another_cool_down() -> None:
    """The probe failing re-opens the breaker from that moment."""
    clock = FakeClock()
    breaker = CircuitBreaker(failures=2, reset_after=2.0, clock=clock)
    backend = Backend()
    backend.error = StoreUnavailable("down")
    await _fail(breaker, backend, 2)
    clock.advance(2.0)
    await _fail(breaker, backend, 1)  # the probe
    assert breaker.state == "open"
    clock.advance(1.0)
    reached = backend.calls
    with pytest.raises(StoreUnavailable, match="circuit breaker open"):
        await breaker.call(backend)
    assert backend.calls == reached


async def test_only_one_probe_at_a_time() -> None:
    """While the probe is in flight every other call is still skipped."""
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, reset_after=1.0, clock=clock)
    backend = Backend()
    backend.error = StoreUnavailable("down")
    await _fail(breaker, backend, 1)
    clock.advance(1.0)
    entered, release = anyio.Event(), anyio.Event()

    async def slow_probe() -> str:
        entered.set()
        await release.wait()
        return "ok"

    async with anyio.create_task_group() as tg:
        tg.start_soon(breaker.call, slow_probe)
        await entered.wait()
        with pytest.raises(StoreUnavailable, match="circuit breaker open"):
            await breaker.call(backend)
        release.set()
    assert breaker.state == "closed"


async def test_a_cancelled_probe_leaves_the_probe_to_the_next_call() -> None:
    """Cancelling the probe counts as nothing; the next call probes instead."""
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, reset_after=1.0, clock=clock)
    backend = Backend()
    backend.error = StoreUnavailable("down")
    await _fail(breaker, backend, 1)
    clock.advance(1.0)

    async def hang() -> str:
        await anyio.sleep_forever()
        return "never"

    with anyio.move_on_after(0):
        await breaker.call(hang)
    backend.error = None
    assert await breaker.call(backend) == "ok"
    assert breaker.state == "closed"


async def test_an_error_reply_proves_the_backend_alive() -> None:
    """A plain StoreError (the backend answered) neither opens nor keeps it open."""
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, reset_after=1.0, clock=clock)
    backend = Backend()
    backend.error = StoreError("WRONGTYPE")
    for _ in range(3):
        with pytest.raises(StoreError):
            await breaker.call(backend)
    assert breaker.state == "closed"


async def test_unexpected_exceptions_count_as_failures() -> None:
    """A client library's own bug (AttributeError under load) counts as a failure."""
    breaker = CircuitBreaker(failures=2, clock=FakeClock())
    backend = Backend()
    backend.error = AttributeError("'NoneType' object has no attribute 'write'")
    for _ in range(2):
        with pytest.raises(AttributeError):
            await breaker.call(backend)
    assert breaker.state == "open"


async def test_zero_failures_disables_it() -> None:
    """``failures=0``: every call reaches the store, however many fail."""
    breaker = CircuitBreaker(failures=0, clock=FakeClock())
    backend = Backend()
    backend.error = StoreUnavailable("down")
    await _fail(breaker, backend, 20)
    assert backend.calls == 20
    assert breaker.state == "closed"


@pytest.mark.parametrize("options", [{"failures": -1}, {"reset_after": 0}])
def test_impossible_settings_are_refused(options: dict[str, float]) -> None:
    """Negative thresholds and a cool-down of zero are configuration errors."""
    with pytest.raises(ConfigurationError):
        CircuitBreaker(**options)  # type: ignore[arg-type]
