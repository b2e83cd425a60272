"""Methods and paths as Starlette, FastAPI, Litestar and Django see them.

A server hands ``post`` over as written and Django runs it as ``POST``; Litestar routes
``/pay/``, ``//pay`` and ``/pay//`` to ``/pay``. None of those spellings may slip past the
middleware, and all of them are the same request for a key.
"""

from __future__ import annotations

import httpx
import pytest

from bastion import IdempotencyMiddleware, IdempotencySettings
from bastion.stores import MemoryStore
from bastion.typing import ASGIApp
from tests.ratelimit.frameworks import FRAMEWORKS, METHOD_HEADER, SPELLINGS, verbatim_method

pytestmark = pytest.mark.anyio

SETTINGS = IdempotencySettings(require_key=("/pay",))


def client(
    app: ASGIApp, settings: IdempotencySettings = SETTINGS, *, follow_redirects: bool = False
) -> httpx.AsyncClient:
    """An httpx client for ``app`` behind the middleware and a verbatim-method server."""
    guarded = IdempotencyMiddleware(app, store=MemoryStore(), settings=settings)
    transport = httpx.ASGITransport(app=verbatim_method(guarded))
    return httpx.AsyncClient(
        transport=transport, base_url="http://test", follow_redirects=follow_redirects
    )


def headers(method: str, key: str | None = None) -> dict[str, str]:
    result = {METHOD_HEADER.decode(): method}
    if key is not None:
        result["idempotency-key"] = key
    return result


@pytest.mark.parametrize("stack", FRAMEWORKS)
async def test_every_spelling_of_a_keyed_route_requires_the_key(stack: str) -> None:
    """``require_key`` answers 400 to ``post /pay``, ``/pay/``, ``//pay`` and ``/pay//``."""
    async with client(FRAMEWORKS[stack]()) as http:
        for method, path in SPELLINGS:
            response = await http.post(f"http://test{path}", headers=headers(method))
            assert response.status_code == 400, (method, path)
            assert response.json()["title"] == "Idempotency-Key required"


@pytest.mark.parametrize("stack", FRAMEWORKS)
async def test_every_spelling_replays_the_first_response(stack: str) -> None:
    """Once ``POST /pay`` ran with a key, each other spelling with that key is a replay."""
    async with client(FRAMEWORKS[stack]()) as http:
        first = await http.post("/pay", headers=headers("POST", "k1"))
        assert first.status_code == 200
        assert "idempotent-replayed" not in first.headers
        for method, path in SPELLINGS:
            again = await http.post(f"http://test{path}", headers=headers(method, "k1"))
            assert (again.status_code, again.content) == (200, first.content), (method, path)
            assert again.headers["idempotent-replayed"] == "true"


@pytest.mark.parametrize("stack", ["litestar", "django"])
async def test_a_spelling_the_router_runs_is_claimed_and_replayed(stack: str) -> None:
    """Where the router runs a spelling (Litestar ``//pay/``, Django ``post``), it runs once
    and ``POST /pay`` with the same key gets its replay."""
    method, path = ("post", "/pay") if stack == "django" else ("POST", "//pay/")
    async with client(FRAMEWORKS[stack]()) as http:
        first = await http.post(f"http://test{path}", headers=headers(method, "k2"))
        again = await http.post("/pay", headers=headers("POST", "k2"))
    assert first.status_code == 200
    assert "run" in first.json()
    assert (again.content, again.headers["idempotent-replayed"]) == (first.content, "true")


@pytest.mark.parametrize("stack", ["starlette", "fastapi"])
async def test_a_redirect_to_the_route_is_not_kept(stack: str) -> None:
    """Starlette answers ``/pay/`` with a 307 to ``/pay``; by default the redirect is not kept,
    so a client that follows it with its key gets the handler run once, then replays."""
    async with client(FRAMEWORKS[stack](), IdempotencySettings(), follow_redirects=True) as http:
        first = await http.post("/pay/", headers=headers("POST", "k3"))
        again = await http.post("/pay/", headers=headers("POST", "k3"))
    assert [r.status_code for r in first.history] == [307]
    assert first.status_code == 200
    assert "idempotent-replayed" not in first.headers
    assert (again.content, again.headers["idempotent-replayed"]) == (first.content, "true")
