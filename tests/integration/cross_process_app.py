"""The app the cross-process tests serve with ``uvicorn --workers 4``.

Every worker process builds its own store from ``BASTION_STORE_URL`` (any URL
`bastion.stores.from_url` accepts), so the only thing the workers share is the store itself.
``POST /orders`` has one side effect, a row inserted into the SQLite file (WAL mode) named by
``BASTION_SIDE_EFFECT_DB``, which lets the test count exactly how often the handler ran.
Every response carries ``X-Worker-Pid`` so the test can see that several processes answered.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bastion import IdempotencyMiddleware
from bastion.stores import from_url
from bastion.typing import ASGIApp, Message, Receive, Scope, Send

STORE = from_url(os.environ["BASTION_STORE_URL"])
SIDE_EFFECT_DB = os.environ["BASTION_SIDE_EFFECT_DB"]
PID = str(os.getpid()).encode()
HANDLER_SECONDS = 0.05
"""How long the handler works before its side effect, so duplicates arrive while in flight."""


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
        Route("/healthz", healthz),
    ],
    lifespan=lifespan,
)

# ---------------------------------------------------------------------------------------------
# RATE-LIMIT ROUTE (to add once RateLimitMiddleware lands): mount it here, around `routes`,
# with a fixed-window tier of limit 60 on e.g. `POST /limited`, built from the same STORE, e.g.
#     protected = RateLimitMiddleware(routes, store=STORE, policy=...)
# and wrap `protected` below instead of `routes`. The matching test is marked in
# tests/integration/test_cross_process.py.
# ---------------------------------------------------------------------------------------------
app = with_pid_header(IdempotencyMiddleware(routes, store=STORE))
