"""A small keyed-request service written from scratch, correct by default, with switches that
each break one promise the kit checks; and the reference service built for the kit."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx
from anyio.lowlevel import checkpoint

from bastion import RateLimitMiddleware
from bastion.check import Target
from bastion.stores import MemoryStore
from bastion.testing import FakeClock
from bastion.typing import Receive, Scope, Send

LIMIT = 30
WINDOW = 60


@dataclass
class Flaws:
    """Each switch breaks one rule; all off, the service keeps every promise."""

    replays_cookies: bool = False
    replay_differs: bool = False
    ignores_principal: bool = False
    ignores_body: bool = False
    no_lock: bool = False
    quoted_is_another_key: bool = False
    t_early: bool = False
    retry_after_early: bool = False
    malformed_fields: bool = False


@dataclass
class FakeService:
    """``POST /orders``, idempotent by key, limited to `LIMIT` per `WINDOW` (fixed window on
    ``clock``)."""

    flaws: Flaws = field(default_factory=Flaws)
    clock: FakeClock = field(default_factory=FakeClock)
    stored: dict[str, tuple[str, int, list[tuple[bytes, bytes]], bytes]] = field(
        default_factory=dict
    )
    running: set[str] = field(default_factory=set)
    counts: dict[int, int] = field(default_factory=dict)
    orders: int = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = dict(scope["headers"])
        window = int(self.clock() // WINDOW)
        reset = (window + 1) * WINDOW - self.clock()
        true_t = -(-int(reset * 1000) // 1000)
        t = max(0, true_t - 30) if self.flaws.t_early else true_t
        used = self.counts.get(window, 0)
        if used >= LIMIT:
            retry = 1 if self.flaws.retry_after_early else true_t
            await self._send(
                send,
                429,
                [(b"retry-after", b"%d" % retry)],
                b'{"status":429}',
                remaining=0,
                t=t,
                problem=True,
            )
            return
        self.counts[window] = used + 1
        remaining, wait = LIMIT - used - 1, t
        raw = headers.get(b"idempotency-key")
        if raw is None:
            await self._send(send, 400, [], b'{"status":400}', remaining, wait, problem=True)
            return
        key = raw.decode()
        if not self.flaws.quoted_is_another_key and len(key) > 1 and key[0] == key[-1] == '"':
            key = key[1:-1]
        principal = "" if self.flaws.ignores_principal else headers.get(b"x-api-key", b"").decode()
        store_key = f"{principal}\0{key}"
        digest = "" if self.flaws.ignores_body else hashlib.sha256(body).hexdigest()
        if store_key in self.running and not self.flaws.no_lock:
            await self._send(
                send,
                409,
                [(b"retry-after", b"1")],
                b'{"status":409}',
                remaining,
                wait,
                problem=True,
            )
            return
        if store_key in self.stored:
            fingerprint, status, stored_headers, stored_body = self.stored[store_key]
            if fingerprint != digest:
                await self._send(send, 422, [], b'{"status":422}', remaining, wait, problem=True)
                return
            if self.flaws.replay_differs:
                stored_body = stored_body.replace(b"}", b',"again":true}')
            replay = [*stored_headers, (b"idempotent-replayed", b"true")]
            await self._send(send, status, replay, stored_body, remaining, wait)
            return
        self.running.add(store_key)
        for _ in range(5):  # the handler's work: other requests get to run meanwhile
            await checkpoint()
        self.orders += 1
        answer = json.dumps({"order": self.orders, "body": body.decode()}).encode()
        cookie = [(b"set-cookie", b"session=s%d" % self.orders)]
        kept = cookie if self.flaws.replays_cookies else []
        self.stored[store_key] = (digest, 201, kept, answer)
        self.running.discard(store_key)
        await self._send(send, 201, cookie, answer, remaining, wait)

    async def _send(
        self,
        send: Send,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        remaining: int,
        t: int,
        *,
        problem: bool = False,
    ) -> None:
        kind = b"application/problem+json" if problem else b"application/json"
        if self.flaws.malformed_fields:
            fields = [(b"ratelimit-policy", b"orders;q=5;w=60"), (b"ratelimit", b"orders;r=x")]
        else:
            fields = [
                (b"ratelimit-policy", b'"orders";q=%d;w=%d' % (LIMIT, WINDOW)),
                (b"ratelimit", b'"orders";r=%d;t=%d' % (remaining, t)),
            ]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", kind), *headers, *fields],
            }
        )
        await send({"type": "http.response.body", "body": body})


ORDERS = Target(path="/orders", body='{"item": "${nonce}"}')
"""The fake service's route."""


async def advance(clock: FakeClock, seconds: float) -> None:
    """The kit's sleep against a service on ``clock``: time passes at once."""
    clock.advance(seconds)
    await anyio.lowlevel.checkpoint()


app = FakeService()
"""The correct fake, for ``bastion check --app tests.check.apps:app``."""
broken_app = FakeService(Flaws(replays_cookies=True, ignores_principal=True))
"""A broken one, for the same."""


# -- the reference service -------------------------------------------------------------------

REGISTER = Target(path="/api/register", body='{"wallet": "0x${nonce}"}', max_wait=7200)
"""Its register route: 40 hex digits after 0x are a fresh wallet each time; its tier's
window is an hour, which the fake clock waits out at once."""


@asynccontextmanager
async def reference_service(tmp_path: Path, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    """The reference service in embedded mode on a fresh SQLite file, its rate limits on
    ``clock``, and a client talking to it in-process."""
    from prometheus_client import CollectorRegistry
    from reference_service.app import create_app
    from reference_service.db.engine import create_engine
    from reference_service.db.migrations import migrate
    from reference_service.settings import ProgramSeed, ServiceSettings

    path = tmp_path / "service.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        await migrate(engine)
    finally:
        await engine.dispose()
    settings = ServiceSettings(
        database_url=f"sqlite+aiosqlite:///{path}",
        admin_token="check-admin-token",
        webhook_secret="whsec_check",
        programs=(ProgramSeed("demo", Decimal(1000), "Demo"),),
    )
    environ: dict[str, Any] = {"RL_REGISTER_PER_HOUR": "40"}
    app = create_app(
        settings, registry=CollectorRegistry(), clock=clock, run_jobs=False, environ=environ
    )
    # the service keeps its rate limits in a MemoryStore on real time: give the middleware
    # one on the fake clock (the stack is built on the first request, so this is in time)
    for middleware in app.user_middleware:
        if middleware.cls is RateLimitMiddleware:
            middleware.kwargs["store"] = MemoryStore(clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            yield client
