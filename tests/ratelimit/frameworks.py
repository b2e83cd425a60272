"""One ``POST /pay`` handler in Starlette, FastAPI, Litestar and Django, for routing tests.

Each handler answers ``{"run": n}`` with a number no earlier run returned, so a test tells a
fresh run from a replay. `verbatim_method` plays the part of a server that hands over the
request line's method as the client wrote it (uvicorn's h11 protocol does; httpx always
upper-cases it), which is how ``post`` reaches an application.

Django is configured here, once per process, with only what its ASGI handler needs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import django
from django.conf import settings as django_settings
from django.http import HttpRequest, JsonResponse
from django.urls import path as django_path
from fastapi import FastAPI
from litestar import Litestar, post
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bastion.typing import ASGIApp, Receive, Scope, Send

METHOD_HEADER = b"x-request-line-method"
"""Ask `verbatim_method` to hand this method to the application instead of httpx's."""

_RUNS = itertools.count(1)


def verbatim_method(app: ASGIApp) -> ASGIApp:
    """Wrap ``app`` so that the ``x-request-line-method`` header becomes the scope's method."""

    async def server(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == METHOD_HEADER:
                    scope = {**scope, "method": value.decode("ascii")}
        await app(scope, receive, send)

    return server


def starlette_app() -> ASGIApp:
    async def pay(request: Request) -> JSONResponse:
        return JSONResponse({"run": next(_RUNS)})

    return Starlette(routes=[Route("/pay", pay, methods=["POST"])])


def fastapi_app() -> ASGIApp:
    app = FastAPI()

    @app.post("/pay")
    async def pay() -> dict[str, int]:
        return {"run": next(_RUNS)}

    return app


def litestar_app() -> ASGIApp:
    @post("/pay", status_code=200)
    async def pay() -> dict[str, int]:
        return {"run": next(_RUNS)}

    return Litestar(route_handlers=[pay])


async def _django_pay(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"run": next(_RUNS)})


urlpatterns = [django_path("pay", _django_pay)]


def django_app() -> ASGIApp:
    if not django_settings.configured:
        django_settings.configure(
            ROOT_URLCONF=__name__,
            ALLOWED_HOSTS=["*"],
            SECRET_KEY="bastion-tests",
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
            DEBUG=False,
        )
        django.setup()
    from django.core.asgi import get_asgi_application

    return get_asgi_application()  # type: ignore[no-any-return]


FRAMEWORKS: dict[str, Callable[[], Any]] = {
    "starlette": starlette_app,
    "fastapi": fastapi_app,
    "litestar": litestar_app,
    "django": django_app,
}

SPELLINGS = [
    ("post", "/pay"),
    ("POST", "/pay/"),
    ("POST", "//pay"),
    ("POST", "/pay//"),
    ("post", "//pay/"),
]
"""Other spellings of ``POST /pay``: Django runs ``post`` as ``POST``, Litestar routes the
slashed paths to ``/pay``, Starlette redirects some of them there."""
