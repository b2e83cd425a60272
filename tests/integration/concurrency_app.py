"""The app test_concurrency_limit.py serves with ``uvicorn --workers 4``.

``POST /slow`` sits behind a concurrency tier of ``BASTION_SLOTS`` slots for everyone (one
key). The handler records how many requests are inside it, across every worker, in the SQLite
file ``BASTION_INFLIGHT_DB`` (one counter row, updated under SQLite's write lock), keeps the
highest count seen, and works for ``HANDLER_SECONDS`` before leaving.
"""

from __future__ import annotations

import json
import os
import sqlite3

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bastion import RateLimitMiddleware, RateLimitSettings, Tier
from bastion.ratelimit import keys
from bastion.stores import from_url
from bastion.typing import Message, Receive, Scope, Send

STORE = from_url(
    os.environ["BASTION_STORE_URL"], **json.loads(os.environ.get("BASTION_STORE_OPTIONS", "{}"))
)
DB = os.environ["BASTION_INFLIGHT_DB"]
PID = str(os.getpid()).encode()
HANDLER_SECONDS = 0.3
"""Simulated work, long enough for many requests to overlap."""


def _move(step: int) -> None:
    conn = sqlite3.connect(DB, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE inflight SET now = now + ?", (step,))
        conn.execute("UPDATE inflight SET peak = MAX(peak, now)")
        conn.execute("COMMIT")
    finally:
        conn.close()


async def slow(request: Request) -> Response:
    await anyio.to_thread.run_sync(_move, 1)
    try:
        await anyio.sleep(HANDLER_SECONDS)
    finally:
        await anyio.to_thread.run_sync(_move, -1)
    return PlainTextResponse("done")


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


routes = Starlette(routes=[Route("/slow", slow, methods=["POST"]), Route("/healthz", healthz)])
limited = RateLimitMiddleware(
    routes,
    store=STORE,
    settings=RateLimitSettings(
        tiers=(
            Tier.concurrent(
                "slow",
                int(os.environ["BASTION_SLOTS"]),
                key=keys.custom(lambda request: "all", name="all"),
                routes=("/slow",),
                fail_open=False,
            ),
        )
    ),
)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    async def send_with_pid(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), (b"x-worker-pid", PID)]}
        await send(message)

    await limited(scope, receive, send_with_pid)
