"""Idempotency keys shared by every worker process, through Redis.

    pip install 'bastion[redis]' uvicorn
    REDIS_URL=redis://localhost:6379/0 uvicorn examples.redis_store_app:app --workers 4
    curl -i -X POST localhost:8000/payments -H 'Idempotency-Key: pay-1' -d '{"amount": 5}'
    curl -i -X POST localhost:8000/payments -H 'Idempotency-Key: pay-1' -d '{"amount": 5}'

(or ``python examples/redis_store_app.py`` for one process). The second call is answered
from Redis with the first call's exact bytes and ``Idempotent-Replayed: true``, whichever
worker process receives it. ``GET /readyz`` reports whether Redis answers, for a load
balancer's readiness probe.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bastion import IdempotencyMiddleware, IdempotencySettings, StoreError
from bastion.stores import RedisStore

# One store per process, built from a URL: it owns a small pool of connections with tight
# timeouts, so a Redis outage costs each request at most ~0.25 s before the policy answers.
STORE = RedisStore.from_url(
    os.environ.get("REDIS_URL", "redis://localhost:6379/0"), prefix="payments-api"
)


async def create_payment(request: Request) -> Response:
    payload = await request.json()
    # ... charge the card here: with the middleware in front this runs once per key ...
    return JSONResponse({"id": str(uuid.uuid4()), "amount": payload["amount"]}, status_code=201)


async def readyz(request: Request) -> Response:
    try:
        await STORE.ping()
    except StoreError:
        return JSONResponse({"redis": "down"}, status_code=503)
    return JSONResponse({"redis": "up"})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    await STORE.aclose()


routes = Starlette(
    routes=[
        Route("/payments", create_payment, methods=["POST"]),
        Route("/readyz", readyz),
    ],
    lifespan=lifespan,
)

app = IdempotencyMiddleware(
    routes,
    store=STORE,
    # refuse keyless payments; when Redis is down answer 503 rather than risk a double charge
    settings=IdempotencySettings(require_key=("/payments",), fail_open=False),
)

if __name__ == "__main__":  # one process; use the uvicorn command above for several workers
    import uvicorn

    uvicorn.run(app)
