"""Awaiting a store call that cancellation must not cut short, at no cost when it need not.

A claim cut short by cancellation may have been taken in the store with nobody left to run
the request or release it, so the claim is shielded. But a shielded cancel scope costs a few
microseconds, more than the rest of a memory store's claim, and a call that finishes without
suspending cannot be interrupted anyway. So the awaitable is stepped once by hand: only if it
suspends does the rest run inside a shielded scope.
"""

from __future__ import annotations

from collections.abc import Awaitable, Generator
from typing import Any, TypeVar

import anyio
from anyio.lowlevel import checkpoint_if_cancelled

__all__ = ["shielded"]

T = TypeVar("T")


class _Resume:
    """Awaiting this carries on an ``__await__`` iterator that has already yielded ``pending``
    to the event loop, passing the loop's answers (values and exceptions) on to it."""

    __slots__ = ("pending", "steps")

    def __init__(self, steps: Generator[Any, Any, Any], pending: Any) -> None:
        self.steps = steps
        self.pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        steps, pending = self.steps, self.pending
        while True:
            try:
                answer = yield pending
            except GeneratorExit:
                steps.close()
                raise
            except BaseException as exc:
                try:
                    pending = steps.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    pending = steps.send(answer)
                except StopIteration as stop:
                    return stop.value


async def shielded(call: Awaitable[T]) -> T:
    """Await ``call`` shielded from cancellation; a cancellation that arrived meanwhile is
    raised once it has finished, and the caller undoes what the call did.

    asyncio's own ``Task.cancel`` (not an anyio cancel scope) still interrupts the call: no
    cancel scope can stop it.
    """
    steps: Generator[Any, Any, T] = call.__await__()
    try:
        pending = steps.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result
    with anyio.CancelScope(shield=True):
        result = await _Resume(steps, pending)
    await checkpoint_if_cancelled()
    return result
