"""The reference service in embedded mode: every bastion middleware over memory stores.

The stack, outermost first: MetricsMiddleware (so it counts what the others answer),
RateLimitMiddleware with the original plan's presets (so a 429 is never stored as an
idempotent response), IdempotencyMiddleware (keys required on every mutating ``/api`` route).
Later work grows the claim, webhook and admin surface and the queue workers.
"""

from __future__ import annotations

import itertools
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bastion import (
    IdempotencyMiddleware,
    IdempotencySettings,
    MetricsApp,
    MetricsMiddleware,
    PrometheusObserver,
    RateLimitMiddleware,
    RateLimitSettings,
    StoreError,
)
from bastion.ratelimit import presets
from bastion.stores import MemoryStore

PROBLEM = "application/problem+json"


def _problem(status: int, slug: str, title: str, detail: str) -> JSONResponse:
    body = {"type": f"urn:bastion:problem:{slug}", "title": title, "status": status}
    return JSONResponse({**body, "detail": detail}, status_code=status, media_type=PROBLEM)


def create_app(
    *, store: MemoryStore | None = None, registry: CollectorRegistry | None = None
) -> Starlette:
    """Build the service; ``registry`` defaults to a fresh one, served at ``/metrics``."""
    store = store or MemoryStore()
    registry = registry if registry is not None else CollectorRegistry()
    observer = PrometheusObserver(registry=registry)
    registrations: dict[str, dict[str, Any]] = {}
    ids = itertools.count(1)

    async def register(request: Request) -> JSONResponse:
        try:
            payload = await request.json()
        except ValueError:
            payload = None
        wallet = payload.get("wallet") if isinstance(payload, dict) else None
        if not isinstance(wallet, str) or not wallet:
            return _problem(
                422,
                "validation",
                "Invalid request",
                "the body must be a JSON object with a non-empty 'wallet' string",
            )
        registration = {"id": next(ids), "wallet": wallet}
        registrations[str(registration["id"])] = registration
        return JSONResponse(registration, status_code=201)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        try:
            await store.ping()
        except StoreError as exc:
            return _problem(503, "not-ready", "Not ready", f"store unreachable: {exc}")
        return JSONResponse({"status": "ready"})

    idempotency = IdempotencySettings.from_env(require_key=("/api/*",))
    rate_limits = RateLimitSettings.from_env(tiers=presets())
    return Starlette(
        routes=[
            Route("/api/register", register, methods=["POST"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", MetricsApp(registry=registry)),
        ],
        middleware=[
            Middleware(MetricsMiddleware, registry=registry),
            Middleware(RateLimitMiddleware, store=store, settings=rate_limits, observer=observer),
            Middleware(IdempotencyMiddleware, store=store, settings=idempotency, observer=observer),
        ],
    )
