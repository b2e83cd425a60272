"""The app the cross-process tests serve with ``uvicorn --workers 4``.

Every worker process builds its own store from ``BASTION_STORE_URL`` (any URL
`bastion.stores.from_url` accepts) and ``BASTION_STORE_OPTIONS`` (JSON keyword arguments), so
the only thing the workers share is the store itself. Its clock is the wall clock shifted by
``BASTION_CLOCK_OFFSET`` seconds, the same in every worker, so a test can start its run at the
beginning of a rate-limit window. ``POST /orders`` is idempotent and has one side effect, a row
inserted into the SQLite file (WAL mode) named by ``BASTION_SIDE_EFFECT_DB``, which lets the
test count exactly how often the handler ran. ``POST /limited`` is rate limited: a fixed
window of ``BASTION_RATE_LIMIT`` requests per ``BASTION_RATE_WINDOW`` seconds per client
address, checked by `RateLimitMiddleware` outside `IdempotencyMiddleware` as an application
would mount them. Every response carries
``X-Worker-Pid`` so the test can see that several processes answered.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bastion import IdempotencyMiddleware, RateLimitMiddleware, RateLimitSettings, Tier
from bastion.stores import from_url
from bastion.typing import ASGIApp, Message, Receive, Scope, Send

CLOCK_OFFSET = float(os.environ.get("BASTION_CLOCK_OFFSET", "0"))


def clock() -> float:
    return time.time() + CLOCK_OFFSET


STORE = from_url(
    os.environ["BASTION_STORE_URL"],
    clock=clock,
    **json.loads(os.environ.get("BASTION_STORE_OPTIONS", "{}")),
)
SIDE_EFFECT_DB = os.environ["BASTION_SIDE_EFFECT_DB"]
PID = str(os.getpid()).encode()
HANDLER_SECONDS = 0.05
"""How long the handler works before its side effect, so duplicates arrive while in flight."""
RATE_LIMITS = RateLimitSettings(
    tiers=(
        Tier(
            name="limited",
            limit=int(os.environ.get("BASTION_RATE_LIMIT", "60")),
            window=int(os.environ.get("BASTION_RATE_WINDOW", "3600")),
            algorithm="fixed_window",
            routes=("/limited",),
            methods=frozenset({"POST"}),
            fail_open=False,  # a store failure is a 503, never an uncounted 200
        ),
    )
)


def _insert(body: bytes) -> int:
    conn = sqlite3.connect(SIDE_EFFECT_DB, timeout=30)
    try:
        cursor = conn.execute(
            "INSERT INTO side_effects (pid, body) VALUES (?, ?)", (os.getpid(), body)
        )
        conn.commit()
        return int(cursor.lastrowid or 0)
    finally:
        conn.close()


async def create_order(request: Request) -> Response:
    body = await request.body()
    await anyio.sleep(HANDLER_SECONDS)
    row = await anyio.to_thread.run_sync(_insert, body)
    return JSONResponse({"order": row, "pid": os.getpid()}, status_code=201)


async def limited(request: Request) -> Response:
    return PlainTextResponse("allowed")


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    await STORE.aclose()


def with_pid_header(app: ASGIApp) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_pid(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), (b"x-worker-pid", PID)]
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_with_pid)

    return wrapped


routes = Starlette(
    routes=[
        Route("/orders", create_order, methods=["POST"]),
        Route("/limited", limited, methods=["POST"]),
        Route("/healthz", healthz),
    ],
    lifespan=lifespan,
)

app = with_pid_header(
    RateLimitMiddleware(
        IdempotencyMiddleware(routes, store=STORE), store=STORE, settings=RATE_LIMITS
    )
)
