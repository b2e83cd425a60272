"""`Gate`: the store's bound is time spent waiting on the backend, not time spent queued.

The backend here is a coroutine whose latency is an ``anyio.sleep`` (it stands for a server's
answer time, it synchronises nothing) or an event that is never set (a frozen server). The
tests run on trio with a clock that jumps ahead whenever every task waits, so the latencies and
the timeout are virtual time: no load on the machine can stretch one past the other. The last
runs on asyncio with asyncio's own timer, as `RedisStore` uses the gate; nothing races its
timeout there.
"""

from __future__ import annotations

import asyncio

import anyio
import pytest
from trio.testing import MockClock

from bastion.exceptions import StoreError, StoreUnavailable
from bastion.stores._breaker import CircuitBreaker, Gate

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    return "trio", {"clock": MockClock(autojump_threshold=0)}


TIMEOUT = 1.0
ANSWER = TIMEOUT / 4
"""Each simulated answer: eight of them queued on one place take twice the timeout."""


async def test_calls_queued_longer_than_the_timeout_succeed_while_the_backend_answers() -> None:
    """Eight calls behind one connection wait twice the timeout in all, and none fails: the
    backend answered each within its bound, the queue is the process's own."""
    gate = Gate(1, TIMEOUT, CircuitBreaker(failures=1), "backend")
    answers: list[int] = []

    async def answer(i: int) -> int:
        await anyio.sleep(ANSWER)
        return i

    async def one(i: int) -> None:
        answers.append(await gate.call("op", lambda: answer(i)))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(one, i)
    assert sorted(answers) == list(range(8))
    assert gate.breaker.state == "closed"


async def test_a_frozen_backend_fails_queued_calls_and_opens_the_breaker() -> None:
    """A backend that never answers fails the call holding the connection and those queued
    behind it (nothing was answered for the timeout), and opens the breaker."""
    gate = Gate(1, 0.2, CircuitBreaker(failures=1), "backend")
    frozen = anyio.Event()
    failures: list[str] = []

    async def one() -> None:
        try:
            await gate.call("op", frozen.wait)
        except StoreUnavailable as exc:
            failures.append(str(exc))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
    assert len(failures) == 3
    assert any("did not answer op" in message for message in failures)
    assert gate.breaker.state == "open"
    with pytest.raises(StoreUnavailable, match="circuit breaker open"):
        await gate.call("op", frozen.wait)


async def test_an_error_reply_is_an_answer() -> None:
    """A backend answering with an error keeps queued calls alive like any answer."""
    gate = Gate(1, TIMEOUT, CircuitBreaker(failures=1), "backend")
    outcomes: list[str] = []

    async def refuse() -> None:
        await anyio.sleep(ANSWER)
        raise StoreError("WRONGTYPE")

    async def one() -> None:
        try:
            await gate.call("op", refuse)
        except StoreUnavailable:
            outcomes.append("unavailable")
        except StoreError:
            outcomes.append("error")

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(one)
    assert outcomes == ["error"] * 8


async def test_a_cancelled_waiter_leaves_its_place_to_the_next() -> None:
    """A queued call that is cancelled gives up its turn; the calls behind it still run,
    and the gate ends with every place free."""
    gate = Gate(1, TIMEOUT, CircuitBreaker(failures=1), "backend")
    release = anyio.Event()
    holding = anyio.Event()
    done: list[str] = []

    async def hold() -> None:
        holding.set()
        await release.wait()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(gate.call, "hold", hold)
            await holding.wait()
            with anyio.CancelScope() as scope:
                scope.cancel()
                await gate.call("cancelled", hold)
            tg.start_soon(lambda: gate.call("after", lambda: _note(done, "after")))
            await anyio.wait_all_tasks_blocked()
            release.set()
    assert done == ["after"]
    assert await gate.call("free", lambda: _note(done, "free")) is None
    assert done == ["after", "free"]


async def _note(done: list[str], what: str) -> None:
    done.append(what)


def _asyncio_gate(timeout: float) -> Gate:
    def loop_time() -> float:
        return asyncio.get_running_loop().time()

    breaker = CircuitBreaker(failures=1)
    return Gate(1, timeout, breaker, "backend", deadline=asyncio.timeout_at, clock=loop_time)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_on_asyncio_its_timer_bounds_a_call_and_leaves_an_outer_cancel_alone(
    anyio_backend: str,
) -> None:
    """With asyncio's own timer (as `RedisStore` runs it) a frozen backend still fails the
    call and counts, while a cancellation from outside stays a cancellation: not a
    timeout, not a failure, and the place is freed."""
    frozen = anyio.Event()
    gate = _asyncio_gate(0.05)
    with anyio.fail_after(30), pytest.raises(StoreUnavailable, match="did not answer op"):
        await gate.call("op", frozen.wait)
    assert gate.breaker.state == "open"

    patient = _asyncio_gate(30)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(patient.call, "op", frozen.wait)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        assert patient.breaker.state == "closed"
        assert await patient.call("op", _add, 1, 2) == 3  # the place was handed back


async def _add(a: int, b: int) -> int:
    return a + b
