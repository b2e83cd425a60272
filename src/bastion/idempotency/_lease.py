"""Keeping leases alive while handlers run, at almost no cost to handlers that finish quickly.

Most handlers finish long before a third of their lease has passed. So on asyncio one
`LeaseRegistry` per middleware keeps a single timer for all its requests: a request costs a
dictionary insert and delete, and a renewal task exists only for a request that outlives a
sweep. (A task group per request cost several event-loop iterations and dominated the
middleware's overhead; a timer per request still cost a few microseconds.) Other event loops
(trio) get a task group per request.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable

import anyio

__all__ = ["LeaseRegistry", "renew_every", "run_keeping_lease"]

Renew = Callable[[], Awaitable[bool]]
"""Renews once; False means stop (the lease is lost or no longer needed)."""


async def renew_every(interval: float, renew: Renew) -> None:
    """Renew every ``interval`` seconds until ``renew`` says there is nothing left to hold."""
    while True:
        await anyio.sleep(interval)
        if not await renew():
            return


class _LoopLeases:
    """The requests of one middleware on one event loop, with the loop's single sweep timer."""

    __slots__ = ("__weakref__", "interval", "loop", "running", "sweeps", "tasks", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self.loop = loop
        self.interval = interval
        # holder -> (sweeps done when it was added, renew): no clock read per request
        self.running: dict[object, tuple[int, Renew]] = {}
        self.tasks: dict[object, asyncio.Task[None]] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.sweeps = 0

    def add(self, holder: object, renew: Renew) -> None:
        self.running[holder] = (self.sweeps, renew)
        if self.timer is None:
            self.timer = self.loop.call_later(self.interval, self._sweep)

    def remove(self, holder: object) -> None:
        self.running.pop(holder, None)
        task = self.tasks.pop(holder, None)
        if task is not None:
            task.cancel()

    def _sweep(self) -> None:
        self.timer = None
        # due: added before the previous sweep (or before this timer started a series)
        due = self.sweeps - 1
        self.sweeps += 1
        for holder, (added, renew) in list(self.running.items()):
            if added <= due and holder not in self.tasks:
                self.tasks[holder] = self.loop.create_task(self._keep(holder, renew))
        if self.running:
            self.timer = self.loop.call_later(self.interval, self._sweep)

    async def _keep(self, holder: object, renew: Renew) -> None:
        try:
            if await renew():
                await renew_every(self.interval, renew)
        finally:
            if self.tasks.get(holder) is asyncio.current_task():
                # renewing stopped by itself (lease lost, or no longer needed): sweep it no more
                del self.tasks[holder]
                self.running.pop(holder, None)


class LeaseRegistry:
    """The requests of one middleware holding leases, renewed every ``interval`` seconds.

    Per event loop, a sweep runs every ``interval`` while any request is registered and starts
    a renewal task for each one registered before the previous sweep, so a lease is first
    renewed between one and two intervals after it was taken: before it runs out, with the
    interval a third of the lease.
    """

    __slots__ = ("_interval", "_last", "_loops")

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last: _LoopLeases | None = None
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopLeases] = (
            weakref.WeakKeyDictionary()
        )

    @staticmethod
    def available() -> bool:
        """Whether `add` can keep leases here (on asyncio); elsewhere the caller runs
        `renew_every` in a task group of its own."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True

    def add(self, holder: object, renew: Renew) -> _LoopLeases | None:
        """Register a running request; None when not on asyncio (use `run_keeping_lease`),
        else what to hand to `remove` once it has finished."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        leases = self._last
        if leases is None or leases.loop is not loop:
            leases = self._loops.get(loop)
            if leases is None:
                leases = self._loops[loop] = _LoopLeases(loop, self._interval)
            self._last = leases
        leases.add(holder, renew)
        return leases


async def run_keeping_lease(
    interval: float, renew: Renew, call: Callable[[], Awaitable[None]]
) -> Exception | None:
    """Await ``call()`` beside a renewal task; return its exception rather than raise it, so
    the caller re-raises it unwrapped from the task group's exception group."""
    error: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(renew_every, interval, renew)
        try:
            await call()
        except Exception as exc:
            error = exc
        finally:
            tg.cancel_scope.cancel()
    return error
