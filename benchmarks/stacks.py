"""The apps issue 14's benchmarks compare, shared by bench_instructions, bench_server and bench_gc.

Every variant wraps the same Starlette endpoint (``POST /payments`` reads a 35-byte JSON body
and answers 201 with a small JSON body). Bastion's full stack is `MetricsMiddleware` outermost,
`RateLimitMiddleware` with two fixed-window tiers (per client address and per ``X-API-Key``,
limits far above any request count) and `IdempotencyMiddleware` innermost, on one store. The
peers' equivalents are the strongest ones `requirements.txt` installs: fastapi-idempotency
(memory) or asgi-idempotency-header (Redis), slowapi with two limits, starlette-exporter and
prometheus-fastapi-instrumentator.

A variant is built by name (`build`), so that a child process (under valgrind, or a uvicorn
worker through `server_app`) builds exactly what the parent measured. Not a benchmark itself:
the nox ``bench`` session runs only ``bench_*.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

LIMIT = 10_000_000
"""Far above any request count here, so every request takes the allowed path."""
BODY = json.dumps({"amount": 1250, "currency": "EUR"}).encode()
PATH = "/payments"
REDIS_URL = os.environ.get("BASTION_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
REDIS_PREFIX = os.environ.get("BASTION_BENCH_PREFIX", "bastionbench")
"""Every Redis key a variant makes starts with it, so the caller can delete them afterwards."""

Closer = Callable[[], Awaitable[Any]]


async def create(request: Request) -> JSONResponse:
    payload = await request.json()
    return JSONResponse({"id": "pay_1", "amount": payload["amount"]}, status_code=201)


def _route(endpoint: Any = create) -> list[Route]:
    return [Route(PATH, endpoint, methods=["POST"])]


# -- bastion ----------------------------------------------------------------------------------


def _tiers() -> Any:
    from bastion import RateLimitSettings, Tier
    from bastion.ratelimit.keys import CLIENT_ADDRESS, header

    return RateLimitSettings(
        tiers=(
            Tier(name="per-address", limit=LIMIT, window=60, algorithm="fixed_window"),
            Tier(
                name="per-api-key",
                limit=LIMIT,
                window=3600,
                algorithm="fixed_window",
                key=header("x-api-key", fallback=CLIENT_ADDRESS),
            ),
        )
    )


def _bastion(
    store: Any, *, metrics: bool = False, ratelimit: bool = False, idempotency: bool = False
) -> Starlette:
    from bastion import IdempotencyMiddleware, MetricsMiddleware, RateLimitMiddleware

    middleware = []
    if metrics:
        from prometheus_client import CollectorRegistry

        middleware.append(Middleware(MetricsMiddleware, registry=CollectorRegistry()))
    if ratelimit:
        middleware.append(Middleware(RateLimitMiddleware, store=store, settings=_tiers()))
    if idempotency:
        middleware.append(Middleware(IdempotencyMiddleware, store=store))
    return Starlette(routes=_route(), middleware=middleware)


def _memory(max_records: int | None = None) -> Any:
    from bastion.stores import MemoryStore

    return MemoryStore() if max_records is None else MemoryStore(max_records=max_records)


def _redis_store() -> Any:
    from bastion.stores import RedisStore

    # a generous timeout: on a busy shared machine a 0.25 s hiccup would fail a request
    return RedisStore(url=REDIS_URL, prefix=REDIS_PREFIX, socket_timeout=2.0)


def bare() -> tuple[Any, list[Closer]]:
    return Starlette(routes=_route()), []


def idempotency() -> tuple[Any, list[Closer]]:
    store = _memory()
    return _bastion(store, idempotency=True), [store.aclose]


def ratelimit() -> tuple[Any, list[Closer]]:
    store = _memory()
    return _bastion(store, ratelimit=True), [store.aclose]


def metrics() -> tuple[Any, list[Closer]]:
    return _bastion(None, metrics=True), []


def full_memory() -> tuple[Any, list[Closer]]:
    store = _memory()
    app = _bastion(store, metrics=True, ratelimit=True, idempotency=True)
    return app, [store.aclose]


def full_redis() -> tuple[Any, list[Closer]]:
    store = _redis_store()
    app = _bastion(store, metrics=True, ratelimit=True, idempotency=True)
    return app, [store.aclose]


# -- peers ------------------------------------------------------------------------------------


def _api_key(request: Request) -> str:
    return request.headers.get("x-api-key", "")


def _slowapi(storage_uri: str) -> tuple[list[Middleware], Any, dict[Any, Any], Any]:
    """slowapi's way to two limits on different keys: one decorator each on the endpoint."""
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.middleware import SlowAPIASGIMiddleware
    from slowapi.util import get_remote_address

    limiter = Limiter(
        key_func=get_remote_address,
        storage_uri=storage_uri,
        key_prefix=REDIS_PREFIX,
        headers_enabled=True,
        strategy="fixed-window",
    )
    endpoint = limiter.limit(f"{LIMIT}/hour", key_func=_api_key)(create)
    endpoint = limiter.limit(f"{LIMIT}/minute", key_func=get_remote_address)(endpoint)
    handlers = {RateLimitExceeded: _rate_limit_exceeded_handler}
    return [Middleware(SlowAPIASGIMiddleware)], endpoint, handlers, limiter


def _fastapi_idempotency() -> Middleware:
    from fastapi_idempotency import IdempotencyMiddleware as PeerMiddleware
    from fastapi_idempotency import MemoryStore as PeerStore

    return Middleware(PeerMiddleware, store=PeerStore())


def _asgi_idempotency_header() -> tuple[Middleware, Closer]:
    from idempotency_header_middleware import IdempotencyHeaderMiddleware
    from idempotency_header_middleware.backends import RedisBackend
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL)
    backend = RedisBackend(
        redis=client,
        keys_key=f"{REDIS_PREFIX}:aih:keys",
        response_key=f"{REDIS_PREFIX}:aih:response:",
    )
    return Middleware(IdempotencyHeaderMiddleware, backend=backend), client.aclose


def _exporter() -> Middleware:
    from starlette_exporter import PrometheusMiddleware

    return Middleware(PrometheusMiddleware, group_paths=True)


def _instrument(app: Starlette) -> Starlette:
    from prometheus_client import CollectorRegistry
    from prometheus_fastapi_instrumentator import Instrumentator

    Instrumentator(registry=CollectorRegistry()).instrument(app)  # type: ignore[arg-type]
    return app


def peer_idempotency() -> tuple[Any, list[Closer]]:
    return Starlette(routes=_route(), middleware=[_fastapi_idempotency()]), []


def peer_ratelimit() -> tuple[Any, list[Closer]]:
    middleware, endpoint, handlers, limiter = _slowapi("memory://")
    app = Starlette(routes=_route(endpoint), middleware=middleware, exception_handlers=handlers)
    app.state.limiter = limiter
    return app, []


def peer_exporter() -> tuple[Any, list[Closer]]:
    return Starlette(routes=_route(), middleware=[_exporter()]), []


def peer_instrumentator() -> tuple[Any, list[Closer]]:
    return _instrument(Starlette(routes=_route())), []


def _peer_stack(metrics: Middleware | None, idempotency: Middleware, storage: str) -> Starlette:
    middleware, endpoint, handlers, limiter = _slowapi(storage)
    outer = [metrics] if metrics is not None else []
    app = Starlette(
        routes=_route(endpoint),
        middleware=[*outer, *middleware, idempotency],
        exception_handlers=handlers,
    )
    app.state.limiter = limiter
    return app


def peers_exporter_memory() -> tuple[Any, list[Closer]]:
    return _peer_stack(_exporter(), _fastapi_idempotency(), "memory://"), []


def peers_instrumentator_memory() -> tuple[Any, list[Closer]]:
    return _instrument(_peer_stack(None, _fastapi_idempotency(), "memory://")), []


def peers_exporter_redis() -> tuple[Any, list[Closer]]:
    idempotency, close = _asgi_idempotency_header()
    return _peer_stack(_exporter(), idempotency, REDIS_URL), [close]


@dataclass(frozen=True)
class Variant:
    name: str
    build: Callable[[], tuple[Any, list[Closer]]]
    replay: bool = False
    """Requests repeat one stored key (checked: every answer is marked as a replay)."""
    keyed: bool = True
    """Requests carry an ``Idempotency-Key`` (a fresh one each, unless ``replay``)."""
    peer: bool = False
    redis: bool = False


VARIANTS = {
    v.name: v
    for v in [
        Variant("bare", bare),
        Variant("idempotency, first run", idempotency),
        Variant("idempotency, replay", idempotency, replay=True),
        Variant("rate limit, 2 tiers", ratelimit),
        Variant("metrics", metrics),
        Variant("full stack, memory", full_memory),
        Variant("full stack, memory, replay", full_memory, replay=True),
        Variant("full stack, redis", full_redis, redis=True),
        Variant("peer fastapi-idempotency, first run", peer_idempotency, peer=True),
        Variant("peer fastapi-idempotency, replay", peer_idempotency, replay=True, peer=True),
        Variant("peer slowapi, 2 limits", peer_ratelimit, peer=True),
        Variant("peer starlette-exporter", peer_exporter, peer=True),
        Variant("peer prometheus-fastapi-instrumentator", peer_instrumentator, peer=True),
        Variant("peers exporter+slowapi+fastapi-idempotency", peers_exporter_memory, peer=True),
        Variant(
            "peers instrumentator+slowapi+fastapi-idempotency",
            peers_instrumentator_memory,
            peer=True,
        ),
        Variant(
            "peers exporter+slowapi+asgi-idempotency-header, redis",
            peers_exporter_redis,
            peer=True,
            redis=True,
        ),
    ]
}


def build(name: str) -> tuple[Any, list[Closer]]:
    return VARIANTS[name].build()


# -- direct ASGI calls ------------------------------------------------------------------------

_SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "method": "POST",
    "scheme": "http",
    "path": PATH,
    "raw_path": PATH.encode(),
    "query_string": b"",
    "root_path": "",
    "client": ("203.0.113.7", 50_000),
    "server": ("bench", 80),
}
_HEADERS = [
    (b"host", b"bench"),
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
    (b"x-api-key", b"bench-api-key-1"),
]
_REQUEST = {"type": "http.request", "body": BODY, "more_body": False}
REPLAY_KEY = b"replayed-key-000"


async def receive() -> dict[str, Any]:
    return _REQUEST


def scopes(variant: Variant, keys: list[bytes]) -> list[dict[str, Any]]:
    """One fresh scope per request (middleware and Starlette write into them)."""
    if not variant.keyed:
        return [{**_SCOPE, "headers": list(_HEADERS)} for _ in keys]
    if variant.replay:
        keys = [REPLAY_KEY] * len(keys)
    return [{**_SCOPE, "headers": [*_HEADERS, (b"idempotency-key", k)]} for k in keys]


def keys(tag: str, start: int, count: int) -> list[bytes]:
    """Fixed-width keys, so that a run's cost does not depend on how far it counted."""
    return [f"{tag}-{i:08d}".encode() for i in range(start, start + count)]


async def run(app: Any, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Call ``app`` once per scope, in order; the response starts, to check afterwards."""
    starts: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            starts.append(message)

    for scope in requests:
        await app(scope, receive, send)
    return starts


def check(variant: Variant, starts: list[dict[str, Any]], count: int) -> str | None:
    """What is wrong with the answers, if anything: every one 201, replays marked as such."""
    if len(starts) != count or any(s["status"] != 201 for s in starts):
        return f"statuses {sorted({s['status'] for s in starts})} for {count} requests"
    if variant.replay and "fastapi-idempotency" not in variant.name:
        marked = sum(
            any(k.lower() == b"idempotent-replayed" for k, _ in s["headers"]) for s in starts
        )
        if marked != count:
            return f"{marked} of {count} answers marked as replays"
    return None


async def prime(app: Any, variant: Variant) -> None:
    """Store the replayed key, so that a replay variant's every timed request replays it."""
    if variant.replay:
        await run(app, scopes(Variant("prime", bare), [REPLAY_KEY]))


# -- uvicorn ----------------------------------------------------------------------------------


def server_app() -> Any:
    """The variant named by ``BASTION_BENCH_VARIANT``, for ``uvicorn --factory``; with
    ``BASTION_BENCH_NO_HIREDIS`` set, redis-py cannot find hiredis and parses in Python; with
    ``BASTION_BENCH_GC_LOG`` set (a directory), the worker reports its collections there
    (`log_collections`); with ``BASTION_BENCH_GC_FREEZE`` set, it calls `gc.freeze` once the
    app is built, as docs/performance.md advises."""
    if os.environ.get("BASTION_BENCH_NO_HIREDIS"):
        import sys

        sys.modules["hiredis"] = None  # type: ignore[assignment]
    if log := os.environ.get("BASTION_BENCH_GC_LOG"):
        log_collections(log)
    app, _closers = build(os.environ["BASTION_BENCH_VARIANT"])
    if os.environ.get("BASTION_BENCH_GC_FREEZE"):
        import gc

        gc.freeze()
    return app


def log_collections(directory: str) -> None:
    """Count this process's collections by generation and time them; after each one, write
    ``gen0 gen1 gen2 longest_ms total_ms`` to a file of this process's own in ``directory``
    (written as they happen: a worker stopped by its supervisor may not run exit handlers)."""
    import gc
    import time

    counts = [0, 0, 0]
    pauses: list[float] = []
    started = [0.0]
    path = os.path.join(directory, f"{os.getpid()}.gc")

    def timer(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        counts[info["generation"]] += 1
        pauses.append(time.perf_counter() - started[0])
        longest, total = max(pauses) * 1000, sum(pauses) * 1000
        with open(path, "w") as file:
            file.write(f"{counts[0]} {counts[1]} {counts[2]} {longest:.2f} {total:.2f}\n")

    gc.callbacks.append(timer)
