"""Idempotency and rate limits together: retries never spend the quota, and replays are traced.

The order is the README's: metrics outermost, then the rate limit, then idempotency, then the
app. The limiter finds the idempotency layer inside it and charges a keyed request only once
that layer knows what it is: a fresh request spends the ``payments`` quota (3 a minute per
client), a replay or an in-flight 409 spends nothing of it, only the generous ``replays`` tier
(30 a minute). With ``opentelemetry-sdk`` installed, spans are printed to the console: a
replay's span carries a link to the span of the request that produced the response.

    python examples/replays_and_quota_app.py          # serves on http://127.0.0.1:8003
    for k in a b c; do curl -s -X POST localhost:8003/pay -H "Idempotency-Key: $k" -d '{}'; done
    curl -si -X POST localhost:8003/pay -H 'Idempotency-Key: a' -d '{}'   # replay: 201, free
    curl -si -X POST localhost:8003/pay -H 'Idempotency-Key: d' -d '{}'   # 4th fresh: 429
"""

from __future__ import annotations

import itertools
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bastion import (
    IdempotencyMiddleware,
    MetricsMiddleware,
    MetricsSettings,
    OTelObserver,
    RateLimitMiddleware,
    RateLimitSettings,
    Tier,
)
from bastion.stores import MemoryStore

PAYMENTS = Tier(name="payments", limit=3, window=60, routes=("/pay",), methods={"POST"})
REPLAYS = Tier(name="replays", limit=30, window=60)
_numbers = itertools.count(1)


async def pay(request: Request) -> Response:
    await request.body()
    return JSONResponse({"payment": next(_numbers)}, status_code=201)


def tracer_provider() -> Any:
    """An SDK provider printing spans, when the SDK is installed (the library needs only the
    API); None otherwise, and spans are then not recorded."""
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
    except ImportError:
        return None
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    return provider


def create_app(provider: Any = None) -> Starlette:
    store = MemoryStore()
    observer = OTelObserver()
    return Starlette(
        routes=[Route("/pay", pay, methods=["POST"])],
        middleware=[
            Middleware(
                MetricsMiddleware,
                settings=MetricsSettings(prometheus=False, otel=True),
                tracer_provider=provider,
            ),
            Middleware(
                RateLimitMiddleware,
                store=store,
                settings=RateLimitSettings(tiers=(PAYMENTS,), replay_tier=REPLAYS),
                observer=observer,
            ),
            Middleware(IdempotencyMiddleware, store=store, observer=observer),
        ],
    )


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(create_app(tracer_provider()), host="127.0.0.1", port=8003)
