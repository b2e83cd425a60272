"""Prometheus metrics (and optionally OpenTelemetry spans) on a small payments API.

    pip install 'bastion[prometheus]' uvicorn        # from a checkout: python3 dev.py test once
    python examples/metrics_app.py                    # serves http://127.0.0.1:8001
    python examples/metrics_app.py --otel             # also prints a span per request
                                                      # (needs opentelemetry-sdk)

Then make some traffic and look at what it measured:

    curl -X POST localhost:8001/payments/acct-1 -H 'Idempotency-Key: k1' -d '{"amount": 5}'
    curl -X POST localhost:8001/payments/acct-1 -H 'Idempotency-Key: k1' -d '{"amount": 5}'
    curl -X POST localhost:8001/payments/acct-2 -H 'Idempotency-Key: k1' -d '{"amount": 9}'
    curl localhost:8001/no/such/page
    curl -s localhost:8001/metrics | grep -E '^bastion_(http_requests|idempotency)'

The first payment is counted under its route template ``/payments/{account}``; the replay and
the 422 for the reused key are answered by IdempotencyMiddleware and counted under
``<bastion>``; the 404 under ``<unmatched>``.
"""

from __future__ import annotations

import argparse
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bastion import (
    IdempotencyMiddleware,
    MetricsMiddleware,
    MetricsSettings,
    MultiObserver,
    Observer,
    OTelObserver,
    PrometheusObserver,
    metrics_app,
)
from bastion.stores import MemoryStore


async def pay(request: Request) -> JSONResponse:
    payload = await request.json()
    return JSONResponse(
        {"account": request.path_params["account"], "amount": payload.get("amount")},
        status_code=201,
    )


def create_app(*, otel: bool = False) -> Starlette:
    """The API, measured by MetricsMiddleware, with idempotency decisions counted too."""
    tracing: dict[str, Any] = {}
    observer: Observer = PrometheusObserver()
    if otel:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        tracing["tracer_provider"] = provider
        observer = MultiObserver([observer, OTelObserver()])
    return Starlette(
        routes=[
            Route("/payments/{account}", pay, methods=["POST"]),
            Route("/metrics", metrics_app),
        ],
        middleware=[
            Middleware(
                MetricsMiddleware,
                settings=MetricsSettings(skip_paths=frozenset({"/metrics"})),
                **tracing,
            ),
            Middleware(IdempotencyMiddleware, store=MemoryStore(), observer=observer),
        ],
    )


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser(description="bastion metrics example")
    parser.add_argument(
        "--otel", action="store_true", help="print an OpenTelemetry span per request"
    )
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(create_app(otel=args.otel), host="127.0.0.1", port=args.port)
