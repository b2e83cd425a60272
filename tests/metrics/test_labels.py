"""Labels that agree across frameworks: plain routes in FastAPI, and bastion's own answers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi import FastAPI
from litestar import Litestar, get
from litestar.middleware import DefineMiddleware
from litestar.params import FromPath
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from bastion import (
    MetricsApp,
    MetricsMiddleware,
    MetricsSettings,
    RateLimitMiddleware,
    RateLimitSettings,
    Tier,
)
from bastion.metrics import BASTION_LABEL, UNMATCHED_LABEL
from bastion.stores import MemoryStore
from bastion.typing import ASGIApp, Receive, Scope, Send
from tests.metrics.conftest import client, value

pytestmark = pytest.mark.anyio

REQUESTS = "bastion_http_requests_total"
ONE_PER_MINUTE = RateLimitSettings(tiers=(Tier(name="t", limit=1, window=60),))


async def plain_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"static"})


def _counts(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (sample.labels["route"], sample.labels["status"]): sample.value
        for family in registry.collect()
        if family.name == "bastion_http_requests"
        for sample in family.samples
        if sample.name == REQUESTS
    }


async def test_fastapi_add_route_is_labelled_by_its_path(registry: CollectorRegistry) -> None:
    """``app.add_route("/metrics", metrics_app)`` in FastAPI is labelled ``/metrics``, as in
    Starlette; one endpoint on two paths and a mounted plain app get their own templates."""
    exposition = MetricsApp(registry=registry)
    app = FastAPI()
    app.add_route("/metrics", exposition)
    app.add_route("/internal/{kind}/metrics", exposition)
    app.mount("/static", plain_asgi)
    middleware = MetricsMiddleware(app, registry=registry)
    async with client(middleware) as c:
        assert (await c.get("/metrics")).status_code == 200
        assert (await c.get("/internal/a/metrics")).status_code == 200
        assert (await c.get("/static/css/site.css")).status_code == 200
        assert (await c.get("/nowhere")).status_code == 404
    assert value(registry, REQUESTS, method="GET", route="/metrics", status="200") == 1
    labels = {"method": "GET", "status": "200"}
    assert value(registry, REQUESTS, route="/internal/{kind}/metrics", **labels) == 1
    assert value(registry, REQUESTS, route="/static/{path}", **labels) == 1
    assert value(registry, REQUESTS, method="GET", route=UNMATCHED_LABEL, status="404") == 1


async def test_starlette_route_and_mount_unchanged(registry: CollectorRegistry) -> None:
    """The same routes in Starlette keep the labels Starlette's own scope gives them."""
    exposition = MetricsApp(registry=registry)
    app = Starlette(routes=[Route("/metrics", exposition), Mount("/static", app=plain_asgi)])
    async with client(MetricsMiddleware(app, registry=registry)) as c:
        await c.get("/metrics")
        await c.get("/static/a.css")
    assert set(_counts(registry)) == {("/metrics", "200"), ("/static/{path}", "200")}


async def _ok(request: Request) -> Response:
    return PlainTextResponse("ok")


def _starlette() -> ASGIApp:
    return Starlette(
        routes=[Route("/items/{n}", _ok)],
        middleware=[Middleware(RateLimitMiddleware, store=MemoryStore(), settings=ONE_PER_MINUTE)],
    )


def _fastapi() -> ASGIApp:
    app = FastAPI()

    @app.get("/items/{n}")
    def item(n: int) -> str:
        return "ok"

    app.add_middleware(RateLimitMiddleware, store=MemoryStore(), settings=ONE_PER_MINUTE)
    return app


def _litestar() -> ASGIApp:
    @get("/items/{n:int}", sync_to_thread=False)
    def item(n: FromPath[int]) -> str:
        return "ok"

    middleware = DefineMiddleware(RateLimitMiddleware, store=MemoryStore(), settings=ONE_PER_MINUTE)
    return Litestar(route_handlers=[item], middleware=[middleware], logging_config=None)


@pytest.mark.parametrize("otel", [False, True], ids=["prometheus", "prometheus+otel"])
@pytest.mark.parametrize("build", [_starlette, _fastapi, _litestar], ids=lambda f: f.__name__[1:])
async def test_bastion_answers_share_one_label_in_every_framework(
    registry: CollectorRegistry, build: Callable[[], ASGIApp], otel: bool
) -> None:
    """A 429 from RateLimitMiddleware is labelled ``<bastion>`` in Starlette, FastAPI and
    Litestar alike (Litestar routes before its middleware run, the others after), while the
    request that ran is labelled by its route."""
    settings = MetricsSettings(otel=otel)
    middleware = MetricsMiddleware(build(), registry=registry, settings=settings)
    async with client(middleware) as c:
        assert (await c.get("/items/1")).status_code == 200
        assert (await c.get("/items/2")).status_code == 429
    assert _counts(registry) == {("/items/{n}", "200"): 1, (BASTION_LABEL, "429"): 1}
