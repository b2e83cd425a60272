"""Idempotency keys and rate limits on a Redis master that Sentinel fails over.

    pip install 'bastion[redis]' uvicorn
    SENTINELS=10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379 REDIS_SERVICE=mymaster \\
        uvicorn examples.redis_sentinel_app:app --workers 4

`RedisStore` takes any redis-py asyncio client, so the client is the one redis-py's
``Sentinel.master_for`` builds: it asks the sentinels where the master is, and after a failover
(a refused connection, or a ``READONLY`` reply from a demoted master) it asks again and
reconnects to the new one. The store's scripts are sent again on the first NOSCRIPT reply, so
no request fails for the new master's empty script cache. See docs/redis-sentinel.md.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio.sentinel import Sentinel
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bastion import (
    IdempotencyMiddleware,
    IdempotencySettings,
    RateLimitMiddleware,
    RateLimitSettings,
    StoreError,
    Tier,
)
from bastion.stores import RedisStore


def _addresses(value: str) -> list[tuple[str, int]]:
    hosts = [item.rsplit(":", 1) for item in value.split(",") if item.strip()]
    return [(host.strip(), int(port)) for host, port in hosts]


SENTINEL = Sentinel(
    _addresses(os.environ.get("SENTINELS", "127.0.0.1:26379")),
    socket_timeout=0.25,  # for the questions to the sentinels themselves
)
# Tight timeouts, as RedisStore.from_url sets them: an outage costs a request ~0.25 s, then the
# policy answers (idempotency: 503, fail closed below; rate limits: let through).
CLIENT = SENTINEL.master_for(
    os.environ.get("REDIS_SERVICE", "mymaster"),
    socket_timeout=0.25,
    socket_connect_timeout=0.25,
    db=int(os.environ.get("REDIS_DB", "0")),
)
STORE = RedisStore(CLIENT, prefix=os.environ.get("REDIS_PREFIX", "payments-api"))


async def create_payment(request: Request) -> Response:
    payload = await request.json()
    return JSONResponse({"amount": payload["amount"]}, status_code=201)


async def readyz(request: Request) -> Response:
    try:
        await STORE.ping()
    except StoreError:
        return JSONResponse({"redis": "down"}, status_code=503)
    return JSONResponse({"redis": "up"})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    await CLIENT.aclose()  # the store leaves a client it was given open: it is yours to close


app = Starlette(
    routes=[
        Route("/payments", create_payment, methods=["POST"]),
        Route("/readyz", readyz),
    ],
    middleware=[
        Middleware(
            RateLimitMiddleware,
            store=STORE,
            settings=RateLimitSettings(
                tiers=(Tier(name="payments", limit=60, window=60, routes=("/payments",)),)
            ),
        ),
        Middleware(
            IdempotencyMiddleware,
            store=STORE,
            settings=IdempotencySettings(require_key=("/payments",), fail_open=False),
        ),
    ],
    lifespan=lifespan,
)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app)
