"""The same small API in Starlette, FastAPI and Litestar, so every rule is tested in each."""

import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.lowlevel import checkpoint
from fastapi import FastAPI
from fastapi import Request as FastAPIRequest
from litestar import Litestar, get, post, put
from litestar import Request as LitestarRequest
from litestar import Response as LitestarResponse
from litestar.middleware import DefineMiddleware
from litestar.response import Stream
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from bastion import IdempotencyMiddleware, IdempotencySettings
from bastion.stores import IdempotencyStore
from bastion.typing import ASGIApp

BINARY = bytes(range(256)) * 4
STREAM_CHUNKS = [b"alpha-", b"beta-", b"\x00\xff-", b"omega"]


@dataclass
class Backend:
    """What the handlers did: how often each ran, and a gate to hold a handler mid-flight."""

    calls: Counter[str] = field(default_factory=Counter)
    gate: anyio.Event | None = None
    entered: anyio.Event = field(default_factory=anyio.Event)

    async def hold(self) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()

    def charge(self, body: bytes) -> tuple[int, dict[str, Any]]:
        self.calls["charge"] += 1
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            payload = {}
        if not isinstance(payload, dict):
            payload = {}
        return 201, {"charge": self.calls["charge"], "amount": payload.get("amount")}


def starlette_app(backend: Backend) -> ASGIApp:
    async def charge(request: Request) -> Response:
        await backend.hold()
        status, payload = backend.charge(await request.body())
        return JSONResponse(payload, status_code=status, headers={"x-charge": "yes"})

    async def text(request: Request) -> Response:
        backend.calls["text"] += 1
        return PlainTextResponse(f"text run {backend.calls['text']}")

    async def binary(request: Request) -> Response:
        backend.calls["binary"] += 1
        return Response(BINARY, media_type="application/octet-stream")

    async def stream(request: Request) -> Response:
        backend.calls["stream"] += 1

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in STREAM_CHUNKS:
                yield chunk

        return StreamingResponse(chunks(), media_type="application/x-custom")

    async def fail(request: Request) -> Response:
        backend.calls["fail"] += 1
        return JSONResponse({"error": "down"}, status_code=503)

    async def boom(request: Request) -> Response:
        backend.calls["boom"] += 1
        raise RuntimeError("handler crashed")

    async def cookie(request: Request) -> Response:
        backend.calls["cookie"] += 1
        response = JSONResponse({"ok": True})
        response.set_cookie("session", "secret")
        return response

    async def limited(request: Request) -> Response:
        backend.calls["limited"] += 1
        return JSONResponse({"error": "slow down"}, status_code=429)

    async def read(request: Request) -> Response:
        backend.calls["read"] += 1
        return JSONResponse({"read": backend.calls["read"]})

    return Starlette(
        routes=[
            Route("/charge", charge, methods=["POST"]),
            Route("/text", text, methods=["POST"]),
            Route("/binary", binary, methods=["PUT"]),
            Route("/stream", stream, methods=["POST"]),
            Route("/fail", fail, methods=["POST"]),
            Route("/boom", boom, methods=["POST"]),
            Route("/cookie", cookie, methods=["POST"]),
            Route("/limited", limited, methods=["POST"]),
            Route("/read", read, methods=["GET", "POST"]),
        ]
    )


def fastapi_app(backend: Backend) -> ASGIApp:
    app = FastAPI()

    @app.post("/charge", status_code=201)
    async def charge(request: FastAPIRequest) -> Response:
        await backend.hold()
        status, payload = backend.charge(await request.body())
        return JSONResponse(payload, status_code=status, headers={"x-charge": "yes"})

    @app.post("/text")
    async def text() -> PlainTextResponse:
        backend.calls["text"] += 1
        return PlainTextResponse(f"text run {backend.calls['text']}")

    @app.put("/binary")
    async def binary() -> Response:
        backend.calls["binary"] += 1
        return Response(BINARY, media_type="application/octet-stream")

    @app.post("/stream")
    async def stream() -> StreamingResponse:
        backend.calls["stream"] += 1

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in STREAM_CHUNKS:
                yield chunk

        return StreamingResponse(chunks(), media_type="application/x-custom")

    @app.post("/fail")
    async def fail() -> JSONResponse:
        backend.calls["fail"] += 1
        return JSONResponse({"error": "down"}, status_code=503)

    @app.post("/boom")
    async def boom() -> None:
        backend.calls["boom"] += 1
        raise RuntimeError("handler crashed")

    @app.post("/cookie")
    async def cookie() -> JSONResponse:
        backend.calls["cookie"] += 1
        response = JSONResponse({"ok": True})
        response.set_cookie("session", "secret")
        return response

    @app.post("/limited")
    async def limited() -> JSONResponse:
        backend.calls["limited"] += 1
        return JSONResponse({"error": "slow down"}, status_code=429)

    @app.api_route("/read", methods=["GET", "POST"])
    async def read() -> dict[str, int]:
        backend.calls["read"] += 1
        return {"read": backend.calls["read"]}

    return app


def litestar_app(backend: Backend, middleware: Any) -> ASGIApp:
    @post("/charge")
    async def charge(request: LitestarRequest[Any, Any, Any]) -> LitestarResponse[bytes]:
        await backend.hold()
        status, payload = backend.charge(await request.body())
        return LitestarResponse(
            json.dumps(payload).encode(),
            status_code=status,
            media_type="application/json",
            headers={"x-charge": "yes"},
        )

    @post("/text", status_code=200)
    async def text() -> str:
        backend.calls["text"] += 1
        return f"text run {backend.calls['text']}"

    @put("/binary")
    async def binary() -> LitestarResponse[bytes]:
        backend.calls["binary"] += 1
        return LitestarResponse(BINARY, media_type="application/octet-stream")

    @post("/stream", status_code=200)
    async def stream() -> Stream:
        backend.calls["stream"] += 1

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in STREAM_CHUNKS:
                yield chunk

        return Stream(chunks(), media_type="application/x-custom")

    @post("/fail")
    async def fail() -> LitestarResponse[dict[str, str]]:
        backend.calls["fail"] += 1
        return LitestarResponse({"error": "down"}, status_code=503)

    @post("/boom")
    async def boom() -> None:
        backend.calls["boom"] += 1
        raise RuntimeError("handler crashed")

    @post("/cookie", status_code=200)
    async def cookie() -> LitestarResponse[dict[str, bool]]:
        backend.calls["cookie"] += 1
        response = LitestarResponse({"ok": True})
        response.set_cookie("session", "secret")
        return response

    @post("/limited")
    async def limited() -> LitestarResponse[dict[str, str]]:
        backend.calls["limited"] += 1
        return LitestarResponse({"error": "slow down"}, status_code=429)

    @get("/read")
    async def read_get() -> dict[str, int]:
        backend.calls["read"] += 1
        return {"read": backend.calls["read"]}

    @post("/read", status_code=200)
    async def read_post() -> dict[str, int]:
        backend.calls["read"] += 1
        return {"read": backend.calls["read"]}

    return Litestar(
        route_handlers=[
            charge,
            text,
            binary,
            stream,
            fail,
            boom,
            cookie,
            limited,
            read_get,
            read_post,
        ],
        middleware=[middleware],
        debug=False,
    )


FRAMEWORKS = ["starlette", "fastapi", "litestar"]


def build(
    framework: str,
    backend: Backend,
    store: IdempotencyStore,
    settings: IdempotencySettings,
    **options: Any,
) -> ASGIApp:
    """The framework's app with IdempotencyMiddleware mounted the way its users would."""
    if framework == "litestar":
        define = DefineMiddleware(IdempotencyMiddleware, store=store, settings=settings, **options)
        return litestar_app(backend, define)
    factory: Callable[[Backend], ASGIApp] = (
        starlette_app if framework == "starlette" else fastapi_app
    )
    app: Any = factory(backend)
    app.add_middleware(IdempotencyMiddleware, store=store, settings=settings, **options)
    return app  # type: ignore[no-any-return]


ENDLESS_CHUNK = b"0123456789abcdef"
ENDLESS_LIMIT = 10_000
"""Chunks the endless stream yields before giving up, so a stream nothing ends fails a test
instead of hanging it."""


@dataclass
class StreamRuns:
    """The streamed handlers of `disconnect_app`: how often they ran and how far they got.

    Each stream yields its first chunk, then waits for ``resume``, so a test can make the
    client leave mid-stream at a point it chooses."""

    resume: anyio.Event
    runs: int = 0
    finished: bool = False
    produced: int = 0
    ran_out: bool = False


def disconnect_app(stream: StreamRuns, file: str) -> ASGIApp:
    """Starlette handlers whose clients leave: a held stream, an endless one, a file."""

    async def held(request: Request) -> Response:
        stream.runs += 1

        async def chunks() -> AsyncIterator[bytes]:
            yield STREAM_CHUNKS[0]
            await stream.resume.wait()
            for chunk in STREAM_CHUNKS[1:]:
                yield chunk
            stream.finished = True

        return StreamingResponse(chunks(), media_type="application/x-custom")

    async def endless(request: Request) -> Response:
        stream.runs += 1

        async def chunks() -> AsyncIterator[bytes]:
            yield ENDLESS_CHUNK
            await stream.resume.wait()
            for _ in range(ENDLESS_LIMIT):
                await checkpoint()
                stream.produced += 1
                yield ENDLESS_CHUNK
            stream.ran_out = True

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    async def send_file(request: Request) -> Response:
        stream.runs += 1
        return FileResponse(file, media_type="application/octet-stream")

    return Starlette(
        routes=[
            Route("/held", held, methods=["POST"]),
            Route("/endless", endless, methods=["POST"]),
            Route("/file", send_file, methods=["POST"]),
        ]
    )
