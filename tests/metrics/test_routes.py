"""Route labels: templates from Starlette, FastAPI and Litestar, mounts included."""

from __future__ import annotations

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from litestar import Litestar, get
from litestar import Router as LitestarRouter
from litestar.params import FromPath
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Host, Mount, Route, Router

from bastion import MetricsMiddleware
from bastion.metrics import UNMATCHED_LABEL
from bastion.metrics._routes import UNKNOWN_MOUNT, RouteResolver
from bastion.typing import Receive, Scope, Send
from tests.metrics.conftest import client, label_values, value

pytestmark = pytest.mark.anyio

REQUESTS = "bastion_http_requests_total"


async def ok(request: Request) -> Response:
    return PlainTextResponse("ok")


async def plain_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"static"})


async def routes_seen(
    app: MetricsMiddleware, registry: CollectorRegistry, paths: list[str], **options: str
) -> set[str]:
    async with client(app) as c:
        for path in paths:
            await c.get(path, **options)  # type: ignore[arg-type]
    return label_values(registry, "bastion_http_requests", "route")


async def test_starlette_route_and_mounts(registry: CollectorRegistry) -> None:
    """Mounted routes carry their mounts' templates; a tenant in a mount is not a label."""
    app = Starlette(
        routes=[
            Route("/a/{x}", ok),
            Mount("/api", routes=[Route("/items/{id}", ok)]),
            Mount(
                "/t/{tenant}",
                routes=[Route("/b/{y}", ok), Mount("/deep", routes=[Route("/c/{z}", ok)])],
            ),
            Mount("/static", app=plain_asgi),
        ]
    )
    middleware = MetricsMiddleware(app, registry=registry)
    paths = ["/a/1", "/api/items/2", "/static/css/site.css", "/static/js/app.js"]
    paths += [f"/t/tenant{n}/b/{n}" for n in range(50)]
    paths += [f"/t/tenant{n}/deep/c/{n}" for n in range(50)]
    assert await routes_seen(middleware, registry, paths) == {
        "/a/{x}",
        "/api/items/{id}",
        "/t/{tenant}/b/{y}",
        "/t/{tenant}/deep/c/{z}",
        "/static/{path}",
    }
    assert value(registry, REQUESTS, method="GET", route="/t/{tenant}/b/{y}", status="200") == 50


async def test_unmatched_inside_a_mount_keeps_the_mount(registry: CollectorRegistry) -> None:
    """A 404 under a mount is labelled by the mount, never by the raw remainder of the path."""
    app = Starlette(routes=[Mount("/t/{tenant}", routes=[Route("/b", ok)])])
    middleware = MetricsMiddleware(app, registry=registry)
    paths = [f"/t/x{n}/missing{n}" for n in range(20)] + ["/elsewhere"]
    assert await routes_seen(middleware, registry, paths) == {"/t/{tenant}/{path}", UNMATCHED_LABEL}


async def test_method_not_allowed_and_redirects(registry: CollectorRegistry) -> None:
    """A 405 keeps its route; a trailing-slash redirect has no route and shares the one label."""
    app = Starlette(routes=[Route("/only-get/", ok, methods=["GET"])])
    middleware = MetricsMiddleware(app, registry=registry)
    async with client(middleware) as c:
        assert (await c.post("/only-get/")).status_code == 405
        assert (await c.get("/only-get")).status_code == 307
    assert value(registry, REQUESTS, method="POST", route="/only-get/", status="405") == 1
    assert value(registry, REQUESTS, method="GET", route=UNMATCHED_LABEL, status="307") == 1


async def test_server_root_path_is_not_part_of_the_route(registry: CollectorRegistry) -> None:
    """A root_path set by a proxy is deployment, not route: only mounts below it count."""
    app = Starlette(routes=[Route("/a/{x}", ok), Mount("/m", routes=[Route("/b/{y}", ok)])])
    middleware = MetricsMiddleware(app, registry=registry)
    transport = httpx.ASGITransport(app=middleware, root_path="/behind-proxy")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        assert (await c.get("/behind-proxy/a/1")).status_code == 200
        assert (await c.get("/behind-proxy/m/b/2")).status_code == 200
    assert label_values(registry, "bastion_http_requests", "route") == {"/a/{x}", "/m/b/{y}"}


async def test_host_routing(registry: CollectorRegistry) -> None:
    """Routes under a Host keep their templates, mounts below the host included."""
    api = Router(routes=[Route("/v/{id}", ok), Mount("/m/{k}", routes=[Route("/w", ok)])])
    app = Starlette(routes=[Host("api.example.com", app=api)])
    middleware = MetricsMiddleware(app, registry=registry)
    headers = {"host": "api.example.com"}
    paths = ["/v/1", "/m/a/w", "/m/b/w"]
    assert await routes_seen(middleware, registry, paths, headers=headers) == {  # type: ignore[arg-type]
        "/v/{id}",
        "/m/{k}/w",
    }


def fastapi_app() -> FastAPI:
    items = APIRouter(prefix="/items")

    @items.get("/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    versioned = APIRouter(prefix="/v1/{version}")
    versioned.include_router(items)
    app = FastAPI()
    app.include_router(versioned)

    @app.get("/users/{uid}")
    async def user(uid: str) -> dict[str, str]:
        return {"uid": uid}

    sub = FastAPI()
    sub.include_router(versioned, prefix="/x")
    app.mount("/sub/{tenant}", sub)
    return app


async def test_fastapi_included_routers_and_mounted_app(registry: CollectorRegistry) -> None:
    """Included routers' prefixes and a mounted sub-app's prefix are part of the template."""
    middleware = MetricsMiddleware(fastapi_app(), registry=registry)
    paths = ["/users/42", "/v1/2/items/3", "/v1/3/items/4", "/sub/acme/x/v1/2/items/5"]
    paths += [f"/sub/t{n}/x/v1/{n}/items/{n}" for n in range(20)]
    assert await routes_seen(middleware, registry, paths) == {
        "/users/{uid}",
        "/v1/{version}/items/{item_id}",
        "/sub/{tenant}/x/v1/{version}/items/{item_id}",
    }


async def test_fastapi_validation_error_keeps_its_route(registry: CollectorRegistry) -> None:
    """FastAPI's own 422 for a bad path parameter is counted under the matched route."""
    middleware = MetricsMiddleware(fastapi_app(), registry=registry)
    async with client(middleware) as c:
        assert (await c.get("/v1/2/items/not-a-number")).status_code == 422
        assert (await c.get("/no/such/path")).status_code == 404
    labels = {"method": "GET", "route": "/v1/{version}/items/{item_id}", "status": "422"}
    assert value(registry, REQUESTS, **labels) == 1
    assert value(registry, REQUESTS, method="GET", route=UNMATCHED_LABEL, status="404") == 1


async def test_litestar_path_template(registry: CollectorRegistry) -> None:
    """Litestar's ``path_template`` is used, with its routers' prefixes, when wrapping the app."""

    @get("/users/{uid:int}", sync_to_thread=False)
    def litestar_user(uid: FromPath[int]) -> dict[str, int]:
        return {"uid": uid}

    app = Litestar(
        route_handlers=[LitestarRouter(path="/api/{version:str}", route_handlers=[litestar_user])],
        logging_config=None,
    )
    middleware = MetricsMiddleware(app, registry=registry)
    paths = ["/api/v1/users/1", "/api/v2/users/2", "/nowhere"]
    assert await routes_seen(middleware, registry, paths) == {
        "/api/{version}/users/{uid}",
        UNMATCHED_LABEL,
    }


def test_unknown_mount_prefix_is_one_label() -> None:
    """A mount the index cannot see (no router in the scope) is one fixed label, not raw text."""

    class FakeRoute:
        path_format = "/leaf/{id}"

    resolve = RouteResolver()
    labels = {
        resolve({"route": FakeRoute(), "root_path": f"/x{n}", "app_root_path": ""})
        for n in range(100)
    }
    assert labels == {UNKNOWN_MOUNT + "/leaf/{id}"}


def test_route_without_template_counts_as_unmatched() -> None:
    """A route object with no path template (a Host that matched nothing) resolves to None."""
    resolve = RouteResolver()
    assert resolve({"route": Host("example.com", app=plain_asgi)}) is None
    assert resolve({}) is None


def test_resolver_memory_is_bounded_by_the_routing_table() -> None:
    """Only parameter-free mount prefixes are memoised: 1000 tenants add no entry."""
    app = Starlette(
        routes=[
            Mount("/t/{tenant}", routes=[Route("/b", ok)]),
            Mount("/s", routes=[Route("/c", ok)]),
        ]
    )
    resolve = RouteResolver()
    for n in range(1000):
        scope = {"router": app.router, "root_path": f"/t/x{n}", "app_root_path": ""}
        assert resolve({**scope, "route": app.routes[0].routes[0]}) == "/t/{tenant}/b"
    scope = {"router": app.router, "root_path": "/s", "app_root_path": ""}
    assert resolve({**scope, "route": app.routes[1].routes[0]}) == "/s/c"
    assert resolve._static == {"/s": "/s"}
