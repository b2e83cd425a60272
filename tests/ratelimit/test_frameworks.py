"""The middleware in real Starlette, FastAPI, Litestar and Django applications."""

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
from tests.ratelimit.frameworks import FRAMEWORKS, METHOD_HEADER, SPELLINGS, verbatim_method

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


PAY = RateLimitSettings(
    tiers=(Tier(name="pay", limit=1, window=60, routes=("/pay",), methods=frozenset({"POST"})),)
)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(("method", "path"), SPELLINGS)
async def test_other_spellings_of_a_route_share_its_limit(
    framework: str, method: str, path: str
) -> None:
    """``post``, ``/pay/``, ``//pay`` and ``/pay//`` count against ``POST /pay``'s tier,
    whichever comes first: a limit of one lets exactly one of the pair through."""
    for first, second in [((method, path), ("POST", "/pay")), (("POST", "/pay"), (method, path))]:
        app = RateLimitMiddleware(FRAMEWORKS[framework](), store=MemoryStore(), settings=PAY)
        statuses = []
        async with client(verbatim_method(app)) as http:
            for verb, target in (first, second):
                response = await http.post(
                    f"http://test{target}", headers={METHOD_HEADER.decode(): verb}
                )
                statuses.append(response.status_code)
        assert statuses[0] != 429
        assert statuses[1] == 429


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_every_spelling_in_turn_gets_one_request_through(framework: str) -> None:
    """Across all the spellings of ``POST /pay`` a limit-1 tier lets exactly one through."""
    app = RateLimitMiddleware(FRAMEWORKS[framework](), store=MemoryStore(), settings=PAY)
    async with client(verbatim_method(app)) as http:
        statuses = [
            (
                await http.post(f"http://test{target}", headers={METHOD_HEADER.decode(): verb})
            ).status_code
            for verb, target in [("POST", "/pay"), *SPELLINGS]
        ]
    assert statuses[0] == 200
    assert statuses[1:] == [429] * len(SPELLINGS)
