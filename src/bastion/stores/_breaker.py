"""`CircuitBreaker`: a store that keeps failing is skipped instead of waited for.

Without it every request during an outage pays the store's whole timeout before the
middleware's fail-open or fail-closed policy answers (a frozen Redis cost 621 ms a request).
After ``failures`` consecutive failures the breaker opens: calls raise `StoreUnavailable` at
once, without touching the backend, for ``reset_after`` seconds. Then one call is let through
as a probe (half-open) while the others still fail at once; its success closes the breaker,
its failure opens it for another ``reset_after``.

What counts as a failure: `StoreUnavailable` (unreachable, timed out) and anything that is
not a `StoreError` at all (a client library's own bug under load). A plain `StoreError` came
back from a backend that answered, so it proves the backend alive. Cancellation counts as
neither: a cancelled probe hands the probe to the next call.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal, TypeVar

import anyio

from bastion.exceptions import ConfigurationError, StoreError, StoreUnavailable
from bastion.typing import Clock

__all__ = ["DEFAULT_FAILURES", "DEFAULT_RESET_AFTER", "CircuitBreaker", "Gate", "State"]

T = TypeVar("T")
State = Literal["closed", "open", "half_open"]

DEFAULT_FAILURES = 5
"""Consecutive failures that open the breaker: a burst of timeouts, not one lost packet."""
DEFAULT_RESET_AFTER = 2.0
"""Seconds an open breaker skips the store before one call probes it again."""


class CircuitBreaker:
    """Counts a store's consecutive failures and short-circuits calls while it is down.

    One breaker belongs to one store (all its operations share it); ``clock`` is monotonic
    seconds and injectable so tests move time instead of sleeping. ``failures=0`` disables it:
    every call goes to the store.
    """

    __slots__ = ("_clock", "_failures", "_opened_at", "_probing", "_streak", "name", "reset_after")

    def __init__(
        self,
        *,
        failures: int = DEFAULT_FAILURES,
        reset_after: float = DEFAULT_RESET_AFTER,
        clock: Clock = time.monotonic,
        name: str = "store",
    ) -> None:
        if failures < 0 or reset_after <= 0:
            raise ConfigurationError("breaker failures must be >= 0 and reset_after positive")
        self._failures = failures
        self.reset_after = reset_after
        self._clock = clock
        self.name = name
        self._streak = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> State:
        """``closed`` (calls go through), ``open`` (calls fail at once) or ``half_open``
        (the cool-down is over: the next call, or the one in flight, probes the store)."""
        if self._opened_at is None:
            return "closed"
        if self._probing or self._clock() - self._opened_at >= self.reset_after:
            return "half_open"
        return "open"

    @property
    def enabled(self) -> bool:
        return self._failures > 0

    def check(self) -> None:
        """Raise `StoreUnavailable` if a call now would be skipped (open, cool-down running,
        or a probe already in flight), before the caller queues for a connection."""
        if self._opened_at is not None and (
            self._probing or self._clock() - self._opened_at < self.reset_after
        ):
            self._skip()

    def _skip(self) -> None:
        raise StoreUnavailable(
            f"{self.name} skipped: circuit breaker open after {self._failures} consecutive failures"
        )

    def _admit(self) -> bool:
        """Whether this call may go to the store; True when it is the half-open probe."""
        if self._opened_at is None:
            return False
        if self._probing or self._clock() - self._opened_at < self.reset_after:
            self._skip()
        self._probing = True
        return True

    def _failed(self) -> None:
        self._streak += 1
        if self._opened_at is not None or self._streak >= self._failures:
            self._opened_at = self._clock()  # (re)open: a failed probe restarts the cool-down

    def _succeeded(self) -> None:
        self._streak = 0
        self._opened_at = None

    def _count(self, probe: bool, error: BaseException | None) -> None:
        """Count how a call admitted by `_admit` ended: ``error`` None when it succeeded."""
        if probe:
            self._probing = False
        if error is None or (
            isinstance(error, StoreError) and not isinstance(error, StoreUnavailable)
        ):
            self._succeeded()  # the backend answered, if only with an error
        elif isinstance(error, Exception):
            self._failed()  # not a cancellation: that says nothing of the backend

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation`` unless the breaker is open; count how it went."""
        if not self._failures:
            return await operation()
        probe = self._admit()
        try:
            result = await operation()
        except BaseException as exc:
            self._count(probe, exc)
            raise
        self._count(probe, None)
        return result

    def reset(self) -> None:
        """Close the breaker by hand (after maintenance, say): the next call goes through."""
        self._succeeded()
        self._probing = False


class Gate:
    """At most ``size`` calls at once to one backend, each bounded by ``timeout`` seconds of
    waiting on the backend, through ``breaker``.

    A call waits for a free place in FIFO order while the backend keeps answering the calls
    ahead of it: a process that queues behind its own burst, or whose event loop is starved
    of CPU, is slow, not facing an outage, and its calls must not fail (nor open the
    breaker). A call fails once the backend has been silent for ``timeout`` since the call
    began or since the last answer to any of this gate's calls, whichever is later (a frozen
    or dead server), or at once when the breaker is open. Only the failures of calls that
    reached the backend are counted by the breaker. So a frozen server costs a call about
    ``timeout``, queued or not, and a call holding a place never waits more than ``timeout``
    for its own answer.

    ``deadline`` (an async context manager raising `TimeoutError` at a ``clock`` time) and
    ``clock`` are anyio's by default, so the gate runs on any backend; an asyncio-only caller
    passes ``asyncio.timeout_at`` and the loop's clock, which cost a fraction of anyio's
    cancel scope on every call.
    """

    __slots__ = (
        "_answered_at",
        "_clock",
        "_deadline",
        "_free",
        "_waiters",
        "breaker",
        "name",
        "timeout",
    )

    def __init__(
        self,
        size: int,
        timeout: float,
        breaker: CircuitBreaker,
        name: str,
        *,
        deadline: Callable[[float], AbstractAsyncContextManager[object]] | None = None,
        clock: Clock = anyio.current_time,
    ) -> None:
        self._free = size
        self._waiters: deque[anyio.Event] = deque()
        self._answered_at = -float("inf")
        self._deadline = _fail_at if deadline is None else deadline
        self._clock = clock
        self.timeout = timeout
        self.breaker = breaker
        self.name = name

    async def call(self, operation: str, call: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``call(*args)`` once a place is free, within ``timeout`` of waiting for its answer.

        The breaker is asked and told directly (`CircuitBreaker.call`'s own steps) rather than
        wrapped around another coroutine: this runs on every store call.
        """
        breaker = self.breaker
        breaker.check()
        since = self._clock()
        if self._free and not self._waiters:
            self._free -= 1
        else:
            await self._queue(operation, since)
        try:
            deadline = max(since, self._answered_at) + self.timeout
            counted = breaker.enabled
            probe = counted and breaker._admit()
            try:
                async with self._deadline(deadline):
                    result = await call(*args)
            except TimeoutError as exc:
                error = StoreUnavailable(
                    f"{self.name} did not answer {operation} within {self.timeout} s"
                )
                if counted:
                    breaker._count(probe, error)
                raise error from exc
            except BaseException as exc:
                if isinstance(exc, StoreError) and not isinstance(exc, StoreUnavailable):
                    self._answered_at = self._clock()  # an error reply is an answer
                if counted:
                    breaker._count(probe, exc)
                raise
            self._answered_at = self._clock()
            if counted:
                breaker._count(probe, None)
            return result
        finally:
            self._leave()

    async def _queue(self, operation: str, since: float) -> None:
        """Wait for a place, first come first served."""
        turn = anyio.Event()
        self._waiters.append(turn)
        try:
            while True:
                left = max(since, self._answered_at) + self.timeout - self._clock()
                if left <= 0:
                    raise StoreUnavailable(
                        f"{self.name} answered none of this process's calls within "
                        f"{self.timeout} s while {operation} waited for a connection"
                    )
                if turn.is_set():
                    return
                with anyio.move_on_after(left):
                    await turn.wait()
                if not turn.is_set():
                    self.breaker.check()
        except BaseException:
            if turn.is_set():
                self._leave()  # handed a place while leaving: pass it on
            else:
                self._waiters.remove(turn)
            raise

    def _leave(self) -> None:
        if self._waiters:
            self._waiters.popleft().set()
        else:
            self._free += 1


@asynccontextmanager
async def _fail_at(deadline: float) -> AsyncIterator[None]:
    with anyio.fail_at(deadline):
        yield
