"""Helpers for driving `RateLimitMiddleware`: an echo app, clients, raw ASGI calls, fakes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import httpx

from bastion import RateLimitMiddleware, RateLimitSettings, Tier
from bastion.observe import RateLimitOutcome
from bastion.stores import MemoryStore, RateLimitDecision, RateLimitHit
from bastion.testing import FaultyStore
from bastion.typing import Message, Receive, Scope, Send
from tests.asgi import http_scope


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers 200 with the request body it read, so tests see what the handler got."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    payload = json.dumps({"path": scope["path"], "body": body.decode("latin-1")}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def limited(
    *tiers: Tier, store: Any = None, observer: Any = None, **settings: Any
) -> RateLimitMiddleware:
    """The echo app behind the middleware with these tiers (memory store by default)."""
    options: dict[str, Any] = {} if observer is None else {"observer": observer}
    return RateLimitMiddleware(
        echo_app,
        store=store if store is not None else MemoryStore(),
        settings=RateLimitSettings(tiers=tiers, **settings),
        **options,
    )


def client(app: Any, peer: str = "127.0.0.1") -> httpx.AsyncClient:
    """An httpx client calling ``app`` in process, as a client at address ``peer``."""
    transport = httpx.ASGITransport(app=app, client=(peer, 50_000))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def call(
    app: Any,
    *,
    method: str = "GET",
    path: str = "/",
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes | Sequence[bytes] = b"",
    peer: tuple[str, int] | None = ("127.0.0.1", 50_000),
    query: bytes = b"",
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """One raw ASGI request: (status, headers, body). ``body`` may be a list of chunks."""
    chunks = [body] if isinstance(body, bytes) else list(body)
    messages: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = http_scope(method, path, headers=headers, query=query, client=peer)
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], list(start.get("headers", [])), payload


def fields(headers: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    """Response headers as a dict of lower-case names to text."""
    return {k.decode().lower(): v.decode() for k, v in headers}


def broken_store(error: Exception | None = None) -> FaultyStore:
    """A rate-limit store whose backend is down."""
    store = FaultyStore(MemoryStore())
    store.fail("hit", error)
    store.fail("ping", error)
    return store


class CountingStore(MemoryStore):
    """A memory store that records every call, to pin one store call per request."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.calls: list[list[RateLimitHit]] = []

    async def hit(self, hits: Sequence[RateLimitHit]) -> list[RateLimitDecision]:
        self.calls.append(list(hits))
        return await super().hit(hits)


class RecordingObserver:
    """Keeps every decision and store call the middleware reports."""

    def __init__(self) -> None:
        self.decisions: list[tuple[str, RateLimitOutcome]] = []
        self.store_calls: list[tuple[str, str, bool]] = []

    def idempotency(self, scope: Scope, outcome: Any) -> None:
        raise AssertionError("the rate limiter reported an idempotency outcome")

    def rate_limit(self, scope: Scope, tier: str, outcome: RateLimitOutcome) -> None:
        self.decisions.append((tier, outcome))

    def store_call(self, backend: str, operation: str, seconds: float, *, error: bool) -> None:
        self.store_calls.append((backend, operation, error))
