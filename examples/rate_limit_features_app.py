"""Shadow tiers, costs, per-key overrides, count-on-response and concurrency limits.

Run it, then try each route:

    python examples/rate_limit_features_app.py        # serves on http://127.0.0.1:8002
    curl -si -X POST http://127.0.0.1:8002/upload --data-binary @README.md | head -n 8
    curl -si http://127.0.0.1:8002/report -H 'x-api-key: premium'          # 10 a minute
    curl -si http://127.0.0.1:8002/report -H 'x-api-key: anyone'           # 1 a minute
    for i in 1 2 3 4; do curl -si -X POST http://127.0.0.1:8002/login -d 'wrong' | head -1; done
    curl -si http://127.0.0.1:8002/export &  curl -si http://127.0.0.1:8002/export  # 1 at a time

Every route is also watched by a shadow tier (``new-global``) that never refuses anything:
its would-be refusals are logged and counted as ``outcome="would_limit"``.
"""

from __future__ import annotations

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bastion import RateLimitMiddleware, RateLimitSettings, Tier
from bastion.ratelimit import LimitOverrides, costs, keys
from bastion.stores import MemoryStore

EXPORT_SECONDS = 2.0
"""How long an export works, so that a second one in flight is refused."""


async def plan_limit(key: str) -> int | None:
    """Your plan or tenant lookup (a database, a billing API); None keeps the tier's own."""
    return 10 if key == "hdr:x-api-key=premium" else None


TIERS = (
    # a tier being rolled out: decided and counted, never enforced
    Tier(name="new-global", limit=5, window=60, shadow=True),
    # uploads: 1 MB of request bodies per minute per client (qu="content-bytes")
    Tier(
        name="upload-bytes",
        limit=1_000_000,
        window=60,
        cost=costs.content_length(),
        routes=("/upload",),
    ),
    # reports: 1 a minute, 10 for premium keys, from the plan lookup (cached a minute)
    Tier(
        name="reports",
        limit=1,
        window=60,
        key=keys.header("x-api-key", hashed=False),
        overrides=LimitOverrides(plan_limit, ttl=60),
        routes=("/report",),
    ),
    # logins: only failures count, 3 per 15 minutes per client, then every attempt is refused
    Tier(
        name="login-failures",
        limit=3,
        window=900,
        algorithm="fixed_window",
        count_when={401},
        routes=("/login",),
    ),
    # exports: one at a time per client (qu="concurrent-requests")
    Tier.concurrent("exports", 1, routes=("/export",)),
)


async def upload(request: Request) -> Response:
    return PlainTextResponse(f"stored {len(await request.body())} bytes")


async def report(request: Request) -> Response:
    return PlainTextResponse("report")


async def login(request: Request) -> Response:
    if await request.body() == b"open sesame":
        return PlainTextResponse("welcome")
    return PlainTextResponse("wrong password", status_code=401)


async def export(request: Request) -> Response:
    await anyio.sleep(EXPORT_SECONDS)  # the export's work
    return PlainTextResponse("export done")


def create_app(store: MemoryStore | None = None) -> Starlette:
    """The app behind the middleware; tests pass their own store."""
    settings = RateLimitSettings(tiers=TIERS)
    return Starlette(
        routes=[
            Route("/upload", upload, methods=["POST"]),
            Route("/report", report),
            Route("/login", login, methods=["POST"]),
            Route("/export", export),
        ],
        middleware=[
            Middleware(RateLimitMiddleware, store=store or MemoryStore(), settings=settings)
        ],
    )


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(create_app(), host="127.0.0.1", port=8002)
