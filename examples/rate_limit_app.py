"""A Starlette app with two rate-limit tiers: per client address, and per wallet on claims.

Run it, then watch the headers and the 429:

    python examples/rate_limit_app.py          # serves on http://127.0.0.1:8001
    for i in 1 2 3 4; do
      curl -si -X POST http://127.0.0.1:8001/claims -d '{"wallet": "0xabc"}' | head -n 6
    done

The limits can be changed without touching the code: ``CLAIMS_PER_MINUTE=10`` and the
``BASTION_RATELIMIT_*`` variables (``BASTION_RATELIMIT_LEGACY_HEADERS=true``, say).
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bastion import RateLimitMiddleware, RateLimitSettings, Tier
from bastion.ratelimit import keys
from bastion.stores import MemoryStore

TIERS = (
    # every route: a generous 60 requests per minute per client address, smoothed
    Tier(name="per-ip", limit=60, window=60, algorithm="sliding_window"),
    # claims: 3 per minute per wallet, in a burst or spread out (token bucket)
    Tier(
        name="claims",
        limit=int(os.environ.get("CLAIMS_PER_MINUTE", "3")),
        window=60,
        algorithm="gcra",
        key=keys.json_field("wallet", fallback=keys.query_param("wallet")),
        routes=("/claims",),
        methods=frozenset({"POST"}),
    ),
)


async def claim(request: Request) -> JSONResponse:
    """The handler still reads the whole body, although the limiter read it first."""
    payload = await request.json()
    return JSONResponse({"claimed": True, "wallet": payload.get("wallet")}, status_code=201)


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": "world"})


def create_app() -> Starlette:
    settings = RateLimitSettings.from_env(tiers=TIERS)
    return Starlette(
        routes=[Route("/claims", claim, methods=["POST"]), Route("/", hello)],
        middleware=[Middleware(RateLimitMiddleware, store=MemoryStore(), settings=settings)],
    )


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8001)
