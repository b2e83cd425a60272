"""Public type aliases and protocols shared by the middleware, kept in one leaf module."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

__all__ = [
    "ASGIApp",
    "Clock",
    "Message",
    "PrincipalExtractor",
    "Receive",
    "Scope",
    "Send",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

Clock = Callable[[], float]
"""Seconds as a float, monotonic or wall clock; injected so tests never sleep."""


class PrincipalExtractor(Protocol):
    """Names the tenant a request belongs to; idempotency keys are scoped to it."""

    def __call__(self, scope: Scope, /) -> str | None: ...
