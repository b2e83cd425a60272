"""The reference service's ASGI application, embedded mode: memory stores, no servers."""

from __future__ import annotations

import itertools
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bastion import IdempotencyMiddleware, IdempotencySettings
from bastion.stores import MemoryStore


def create_app(*, store: MemoryStore | None = None) -> Starlette:
    """Build the service; every mutating route is protected by idempotency keys."""
    store = store or MemoryStore()
    registrations: dict[str, dict[str, Any]] = {}
    ids = itertools.count(1)

    async def register(request: Request) -> JSONResponse:
        try:
            payload = await request.json()
        except ValueError:
            payload = None
        wallet = payload.get("wallet") if isinstance(payload, dict) else None
        if not isinstance(wallet, str) or not wallet:
            return JSONResponse(
                {
                    "type": "urn:bastion:problem:validation",
                    "title": "Invalid request",
                    "status": 422,
                    "detail": "the body must be a JSON object with a non-empty 'wallet' string",
                },
                status_code=422,
                media_type="application/problem+json",
            )
        registration = {"id": next(ids), "wallet": wallet}
        registrations[str(registration["id"])] = registration
        return JSONResponse(registration, status_code=201)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        await store.ping()
        return JSONResponse({"status": "ready"})

    settings = IdempotencySettings.from_env(require_key=("/api/*",))
    return Starlette(
        routes=[
            Route("/api/register", register, methods=["POST"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
        ],
        middleware=[Middleware(IdempotencyMiddleware, store=store, settings=settings)],
    )
