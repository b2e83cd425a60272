"""The middleware in real Starlette, FastAPI and Litestar applications."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from litestar import Litestar, post
from litestar import Request as LitestarRequest
from litestar.middleware import DefineMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bastion import RateLimitMiddleware, RateLimitSettings, Tier
from bastion.ratelimit import keys
from bastion.stores import MemoryStore
from tests.ratelimit.conftest import client

pytestmark = pytest.mark.anyio

SETTINGS = RateLimitSettings(
    tiers=(
        Tier(name="ip", limit=100, window=60),
        Tier(
            name="claim",
            limit=2,
            window=3600,
            key=keys.json_field("wallet"),
            routes=("/claims/{program}",),
            methods=frozenset({"POST"}),
        ),
    )
)


async def exercise(app: Any) -> None:
    """Two claims per wallet pass with their bodies intact; the third is refused."""
    async with client(app) as http:
        for amount in (1, 2):
            response = await http.post("/claims/p1", json={"wallet": "0xabc", "amount": amount})
            assert response.status_code == 200
            assert response.json() == {"program": "p1", "wallet": "0xabc", "amount": amount}
            assert response.headers["ratelimit"].startswith('"claim";r=')
            assert '"ip";q=100;w=60' in response.headers["ratelimit-policy"]
        denied = await http.post("/claims/p1", json={"wallet": "0xabc", "amount": 3})
        other = await http.post("/claims/p1", json={"wallet": "0xdef", "amount": 4})
    assert denied.status_code == 429
    assert denied.json()["violated-policies"] == ["claim"]
    assert other.status_code == 200


async def test_starlette() -> None:
    """Starlette, with the middleware in its middleware list."""

    async def claim(request: Request) -> JSONResponse:
        payload = await request.json()
        return JSONResponse({"program": request.path_params["program"], **payload})

    app = Starlette(
        routes=[Route("/claims/{program}", claim, methods=["POST"])],
        middleware=[Middleware(RateLimitMiddleware, store=MemoryStore(), settings=SETTINGS)],
    )
    await exercise(app)


async def test_fastapi() -> None:
    """FastAPI, added with add_middleware; the handler's pydantic body parsing still works."""
    app = FastAPI()

    @app.post("/claims/{program}")
    async def claim(program: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {"program": program, **payload}

    app.add_middleware(RateLimitMiddleware, store=MemoryStore(), settings=SETTINGS)
    await exercise(app)


async def test_litestar() -> None:
    """Litestar, through DefineMiddleware, and as a plain ASGI wrapper around the app."""

    @post("/claims/{program:str}", status_code=200)
    async def claim(request: LitestarRequest[Any, Any, Any]) -> dict[str, Any]:
        return {"program": request.path_params["program"], **(await request.json())}

    defined = Litestar(
        route_handlers=[claim],
        middleware=[DefineMiddleware(RateLimitMiddleware, store=MemoryStore(), settings=SETTINGS)],
    )
    await exercise(defined)
    wrapped = RateLimitMiddleware(
        Litestar(route_handlers=[claim]), store=MemoryStore(), settings=SETTINGS
    )
    await exercise(wrapped)
