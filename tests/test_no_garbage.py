"""Requests through bastion's middleware leave no reference cycles behind.

A per-request object that the scope refers to while it refers to the scope is freed only by
the cyclic collector: under load every request then feeds it, and the collections that follow
(full ones included) stall the server. These tests count what a collection finds after
requests driven by raw ASGI calls, with the collector paused so nothing is freed meanwhile.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from bastion import (
    IdempotencyMiddleware,
    MetricsMiddleware,
    RateLimitMiddleware,
    RateLimitSettings,
    Tier,
)
from bastion.ratelimit.keys import CLIENT_ADDRESS, header
from bastion.stores import MemoryStore
from bastion.typing import Message
from tests.asgi import http_scope

BODY = b'{"amount": 1250}'

pytestmark = pytest.mark.anyio


async def endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
    while (await receive()).get("more_body", False):
        pass
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b'{"id": 1}'})


def _tiers() -> RateLimitSettings:
    return RateLimitSettings(
        tiers=(
            Tier(name="per-address", limit=1_000, window=60),
            Tier(
                name="per-api-key",
                limit=1_000,
                window=3600,
                key=header("x-api-key", fallback=CLIENT_ADDRESS),
            ),
        )
    )


def _idempotency(store: MemoryStore) -> Any:
    return IdempotencyMiddleware(endpoint, store=store)


def _ratelimit(store: MemoryStore) -> Any:
    return RateLimitMiddleware(endpoint, store=store, settings=_tiers())


def _metrics(store: MemoryStore) -> Any:
    return MetricsMiddleware(endpoint, registry=CollectorRegistry())


def _full(store: MemoryStore) -> Any:
    inner = IdempotencyMiddleware(endpoint, store=store)
    limited = RateLimitMiddleware(inner, store=store, settings=_tiers())
    return MetricsMiddleware(limited, registry=CollectorRegistry())


STACKS: dict[str, Callable[[MemoryStore], Any]] = {
    "idempotency": _idempotency,
    "ratelimit": _ratelimit,
    "metrics": _metrics,
    "full stack": _full,
}


async def _call(app: Any, key: bytes) -> int:
    scope = http_scope(
        "POST",
        "/pay",
        headers=[(b"x-api-key", b"k1"), (b"idempotency-key", key)],
    )
    statuses: list[int] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0]


@pytest.mark.parametrize("replay", [False, True], ids=["first run", "replay"])
@pytest.mark.parametrize("stack", list(STACKS))
async def test_requests_leave_no_cycles(stack: str, replay: bool) -> None:
    """First runs and replays free everything they made by reference counting alone."""
    app = STACKS[stack](MemoryStore())
    assert await _call(app, b"warm-up") == 201  # first-use caches are not per-request garbage
    gc.collect()
    gc.disable()
    try:
        statuses = [await _call(app, b"warm-up" if replay else b"key-%d" % i) for i in range(20)]
        found = gc.collect()
    finally:
        gc.enable()
    assert statuses == [201] * 20
    assert found == 0
