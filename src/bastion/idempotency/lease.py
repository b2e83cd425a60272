"""Keeping a lease alive while a handler runs, at no cost to handlers that finish quickly.

Most handlers finish long before a third of their lease has passed, so on asyncio the keeper
only arms a timer (``loop.call_later``); a renewal task exists only once a handler outlives
that timer. Starting a task group per request instead costs several event-loop iterations,
which dominated the middleware's overhead. Other event loops (trio) get a task group.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import anyio

__all__ = ["LeaseKeeper", "run_keeping_lease"]

Renew = Callable[[], Awaitable[bool]]
"""Renews once; False means stop (the lease is lost or no longer needed)."""


async def _renew_every(interval: float, renew: Renew) -> None:
    while True:
        await anyio.sleep(interval)
        if not await renew():
            return


class LeaseKeeper:
    """An armed timer on the running asyncio loop that starts renewing when it fires."""

    __slots__ = ("_handle", "_interval", "_loop", "_renew", "_task")

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float, renew: Renew) -> None:
        self._loop = loop
        self._interval = interval
        self._renew = renew
        self._task: asyncio.Task[None] | None = None
        self._handle = loop.call_later(interval, self._spawn)

    @classmethod
    def start(cls, interval: float, renew: Renew) -> LeaseKeeper | None:
        """A keeper on the running asyncio loop, or None under another event loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return cls(loop, interval, renew)

    def _spawn(self) -> None:
        self._task = self._loop.create_task(self._run())

    async def _run(self) -> None:
        if await self._renew():
            await _renew_every(self._interval, self._renew)

    def stop(self) -> None:
        self._handle.cancel()
        if self._task is not None:
            self._task.cancel()


async def run_keeping_lease(
    interval: float, renew: Renew, call: Callable[[], Awaitable[None]]
) -> Exception | None:
    """Await ``call()`` beside a renewal task; return its exception rather than raise it, so
    the caller re-raises it unwrapped from the task group's exception group."""
    error: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(_renew_every, interval, renew)
        try:
            await call()
        except Exception as exc:
            error = exc
        finally:
            tg.cancel_scope.cancel()
    return error
