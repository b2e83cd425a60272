"""Stores: the full stack on memory, Redis and PostgreSQL, beside slowapi and
asgi-idempotency-header on Redis, with the round trips of each request counted on the wire.

The full stack is `RateLimitMiddleware` (two fixed-window tiers, per client address and per
``X-API-Key``, limits far above the request count) outside `IdempotencyMiddleware`, both on one
store, in front of a Starlette endpoint that reads a small JSON body and answers 201. Each
variant is timed on first runs (a fresh ``Idempotency-Key`` per request) and on replays (one
key repeated). Requests are direct ASGI calls in one process, run in interleaved rounds; each
cell reports its best round, since on a shared machine slower rounds measure the neighbours.

Round trips are counted afterwards, untimed, by relaying each variant's connections through
`roundtrips.Relay`: a trip is the client speaking after it heard from the server, so pipelined
commands count once and the commands a Lua script runs inside Redis count not at all. Redis
commands are named from the wire; SQL statements (and the BEGIN/COMMIT SQLAlchemy's asyncpg
adapter sends around them) from SQLAlchemy's events on the store's engine.

Redis (DB 15), PostgreSQL and MariaDB are the machine's real servers; every key and table this run
makes carries a unique tag and is deleted at the end. A server that does not answer is
skipped with a message: this is a benchmark, not a test.

    python benchmarks/bench_stores.py [--quick] [--redis-url URL] [--postgres-url URL]
                                      [--mysql-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from typing import Any

from roundtrips import Relay
from servers import (
    create_tables,
    delete_redis_keys,
    drop_tables,
    host_port,
    log_statements,
    reachable_redis,
    via,
)
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bastion import IdempotencyMiddleware, RateLimitMiddleware, RateLimitSettings, Tier
from bastion.ratelimit.keys import CLIENT_ADDRESS, header
from bastion.stores import MemoryStore

REDIS_URL = "redis://127.0.0.1:6379/15"
POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
MYSQL_URL = "mysql+asyncmy://root@127.0.0.1:3306/test"
TAG = f"bastionbench_{uuid.uuid4().hex[:12]}"
"""In every Redis key and table name this run makes, so cleaning up touches nothing else."""
LIMIT = 10_000_000
"""Far above any request count here, and (limit + cost) x window stays within RedisStore's
exact range, so both tiers always allow and every request takes the path most traffic takes."""
COUNTED = 20
"""Requests per mode whose round trips are counted."""
TARGETS = {"first run": 3, "replay": 2}
"""Issue 4: Redis round trips per request through idempotency and rate limit together."""

Closer = Callable[[], Awaitable[Any]]


async def create(request: Request) -> JSONResponse:
    payload = await request.json()
    return JSONResponse({"id": "pay_1", "amount": payload["amount"]}, status_code=201)


SETTINGS = RateLimitSettings(
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


@dataclass(frozen=True)
class Services:
    """Where the stores connect: the real servers, or the relays counting their trips."""

    redis: str
    postgres: str
    mysql: str = MYSQL_URL
    statements: Counter[str] | None = None


# -- the variants -----------------------------------------------------------------------------


def _stack(store: Any, *, ratelimit: bool = True, idempotency: bool = True) -> Starlette:
    middleware = []
    if ratelimit:
        middleware.append(Middleware(RateLimitMiddleware, store=store, settings=SETTINGS))
    if idempotency:
        middleware.append(Middleware(IdempotencyMiddleware, store=store))
    return Starlette(routes=[Route("/payments", create, methods=["POST"])], middleware=middleware)


async def bare(services: Services) -> tuple[Any, list[Closer]]:
    return _stack(None, ratelimit=False, idempotency=False), []


async def on_memory(services: Services) -> tuple[Any, list[Closer]]:
    store = MemoryStore()
    return _stack(store), [store.aclose]


def _redis_store(services: Services) -> Any:
    from bastion.stores import RedisStore

    # a generous timeout: on a busy shared machine a 0.25 s hiccup would fail a request
    return RedisStore(url=services.redis, prefix=TAG, socket_timeout=2.0)


async def on_redis(services: Services) -> tuple[Any, list[Closer]]:
    store = _redis_store(services)
    return _stack(store), [store.aclose]


async def redis_ratelimit_only(services: Services) -> tuple[Any, list[Closer]]:
    store = _redis_store(services)
    return _stack(store, idempotency=False), [store.aclose]


async def redis_idempotency_only(services: Services) -> tuple[Any, list[Closer]]:
    store = _redis_store(services)
    return _stack(store, ratelimit=False), [store.aclose]


class _SentOnly(Counter[str]):
    """Forwards `log_statements`' names but its BEGIN, COMMIT and ROLLBACK: on MySQL those are
    SQLAlchemy's events, which send nothing on a connection in autocommit mode (the store's
    own engine); what the driver does send is counted by `_count_mysql_ends`."""

    def __init__(self, into: Counter[str]) -> None:
        super().__init__()
        self.into = into

    def __setitem__(self, key: str, value: int) -> None:
        if key not in {"BEGIN", "COMMIT", "ROLLBACK"}:
            self.into[key] += 1


def _count_mysql_ends(log: Counter[str]) -> None:
    """Count each COMMIT and ROLLBACK the MySQL driver sends (the pool's reset included)."""
    from sqlalchemy.dialects.mysql.asyncmy import AsyncAdapt_asyncmy_connection as Adapted

    for name in ("commit", "rollback"):
        send = getattr(Adapted, name)

        def counted(self: Any, send: Any = send, name: str = name) -> Any:
            log[name.upper()] += 1
            return send(self)

        setattr(Adapted, name, counted)


def _sql_store(services: Services, url: str | None = None) -> Any:
    from bastion.stores.sql import SQLStore

    store = SQLStore(url=url or services.postgres, table_prefix=f"{TAG}_")
    if services.statements is not None:
        if store.engine.dialect.name == "mysql":
            log_statements(store.engine.sync_engine, _SentOnly(services.statements))
            _count_mysql_ends(services.statements)
        else:
            log_statements(store.engine.sync_engine, services.statements)
    return store


async def on_postgres(services: Services) -> tuple[Any, list[Closer]]:
    store = _sql_store(services)
    return _stack(store), [store.aclose]


async def on_mysql(services: Services) -> tuple[Any, list[Closer]]:
    store = _sql_store(services, services.mysql)
    return _stack(store), [store.aclose]


def _api_key(request: Request) -> str:
    return request.headers.get("x-api-key", "")


def _slowapi(services: Services) -> tuple[list[Middleware], list[Route], dict[Any, Any], Any]:
    """slowapi's way to two limits on different keys: one decorator each on the endpoint."""
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.middleware import SlowAPIASGIMiddleware
    from slowapi.util import get_remote_address

    limiter = Limiter(
        key_func=get_remote_address,
        storage_uri=services.redis,
        key_prefix=TAG,
        headers_enabled=True,
        strategy="fixed-window",
    )
    endpoint = limiter.limit(f"{LIMIT}/hour", key_func=_api_key)(create)
    endpoint = limiter.limit(f"{LIMIT}/minute", key_func=get_remote_address)(endpoint)
    routes = [Route("/payments", endpoint, methods=["POST"])]
    handlers = {RateLimitExceeded: _rate_limit_exceeded_handler}
    return [Middleware(SlowAPIASGIMiddleware)], routes, handlers, limiter


def _asgi_idempotency_header(services: Services) -> tuple[Middleware, Closer]:
    from idempotency_header_middleware import IdempotencyHeaderMiddleware
    from idempotency_header_middleware.backends import RedisBackend
    from redis.asyncio import Redis

    client = Redis.from_url(services.redis)
    backend = RedisBackend(
        redis=client, keys_key=f"{TAG}:aih:keys", response_key=f"{TAG}:aih:response:"
    )
    return Middleware(IdempotencyHeaderMiddleware, backend=backend), client.aclose


async def slowapi_only(services: Services) -> tuple[Any, list[Closer]]:
    middleware, routes, handlers, limiter = _slowapi(services)
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)
    app.state.limiter = limiter
    return app, []


async def aih_only(services: Services) -> tuple[Any, list[Closer]]:
    middleware, close = _asgi_idempotency_header(services)
    routes = [Route("/payments", create, methods=["POST"])]
    return Starlette(routes=routes, middleware=[middleware]), [close]


async def peer_stack(services: Services) -> tuple[Any, list[Closer]]:
    middleware, routes, handlers, limiter = _slowapi(services)
    idempotency, close = _asgi_idempotency_header(services)
    app = Starlette(
        routes=routes, middleware=[*middleware, idempotency], exception_handlers=handlers
    )
    app.state.limiter = limiter
    return app, [close]


@dataclass(frozen=True)
class Variant:
    name: str
    build: Callable[[Services], Awaitable[tuple[Any, list[Closer]]]]
    server: str | None = None
    """The server whose round trips it makes: "redis", "postgres", "mysql" or none."""
    replays: bool = True
    """Whether a repeated key is answered from the store (checked before timing)."""
    peer: bool = False


VARIANTS = [
    Variant("bare starlette", bare, replays=False),
    Variant("bastion full stack, MemoryStore", on_memory),
    Variant("bastion full stack, RedisStore", on_redis, "redis"),
    Variant("bastion full stack, SQLStore/PostgreSQL", on_postgres, "postgres"),
    Variant("bastion full stack, SQLStore/MariaDB", on_mysql, "mysql"),
    Variant("bastion rate limit only, RedisStore", redis_ratelimit_only, "redis", replays=False),
    Variant("bastion idempotency only, RedisStore", redis_idempotency_only, "redis"),
    Variant("slowapi 2 limits, Redis", slowapi_only, "redis", replays=False, peer=True),
    Variant("asgi-idempotency-header, Redis", aih_only, "redis", peer=True),
    Variant("slowapi + asgi-idempotency-header", peer_stack, "redis", peer=True),
]
REPLAYING = {v.name for v in VARIANTS if v.replays}

# -- requests ---------------------------------------------------------------------------------

BODY = json.dumps({"amount": 1250, "currency": "EUR"}).encode()
SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "method": "POST",
    "scheme": "http",
    "path": "/payments",
    "raw_path": b"/payments",
    "query_string": b"",
    "root_path": "",
    "client": ("203.0.113.7", 50_000),
    "server": ("bench", 80),
}
HEADERS = [
    (b"host", b"bench"),
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
    (b"x-api-key", b"bench-api-key-1"),
]
REQUEST = {"type": "http.request", "body": BODY, "more_body": False}


async def receive() -> dict[str, Any]:
    return REQUEST


def scopes(keys: list[str]) -> list[dict[str, Any]]:
    """One fresh scope per request: middleware and Starlette write into them."""
    return [{**SCOPE, "headers": [*HEADERS, (b"idempotency-key", k.encode())]} for k in keys]


async def run(app: Any, requests: list[dict[str, Any]]) -> tuple[float, list[dict[str, Any]]]:
    """Seconds per request over sequential calls, and the response starts to check."""
    starts: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            starts.append(message)

    begin = time.perf_counter()
    for scope in requests:
        await app(scope, receive, send)
    return (time.perf_counter() - begin) / len(requests), starts


def check(starts: list[dict[str, Any]], count: int, replayed: bool) -> str | None:
    """What is wrong with the answers, if anything: every one 201, replays marked as such."""
    if len(starts) != count or any(s["status"] != 201 for s in starts):
        return f"statuses {sorted({s['status'] for s in starts})} for {count} requests"
    marked = [any(k.lower() == b"idempotent-replayed" for k, _ in s["headers"]) for s in starts]
    if marked != [replayed] * count:
        return f"{sum(marked)} of {count} answers marked as replays, expected {replayed * count}"
    return None


# -- the run ----------------------------------------------------------------------------------


async def prepare(
    variants: list[Variant], services: Services, stack: AsyncExitStack
) -> dict[str, Any]:
    """Build and check each variant; a peer that fails is reported and left out."""
    apps: dict[str, Any] = {}
    for variant in variants:
        try:
            app, closers = await variant.build(services)
            for close in closers:
                stack.push_async_callback(close)
            warm = [f"{TAG}-warm-{VARIANTS.index(variant)}-{i}" for i in range(20)]
            _, starts = await run(app, scopes(warm))
            problem = check(starts, len(warm), False)
            if problem is None:
                _, starts = await run(app, scopes([warm[0]] * 20))
                problem = check(starts, 20, variant.replays)
        except ImportError as exc:
            if not variant.peer:
                raise
            print(
                f"{variant.name}: NOT MEASURED, {exc.name} is not installed (`python3 dev.py bench` installs the peers)"
            )
            continue
        except Exception as exc:
            if not variant.peer:
                raise
            problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            if not variant.peer:
                raise SystemExit(f"{variant.name}: {problem}")
            print(f"{variant.name}: NOT MEASURED, it does not work here: {problem}")
            continue
        apps[variant.name] = app
    return apps


async def time_rounds(apps: dict[str, Any], requests: int, rounds: int) -> dict[str, list[float]]:
    best: dict[str, list[float]] = {name: [float("inf")] * 2 for name in apps}
    gc.disable()
    try:
        for r in range(rounds):
            for name, app in apps.items():
                n = [v.name for v in VARIANTS].index(name)
                first = scopes([f"{TAG}-{n}-{r}-{i}" for i in range(requests)])
                replay = scopes([f"{TAG}-warm-{n}-0"] * requests)
                for mode, batch in enumerate((first, replay)):
                    seconds, starts = await run(app, batch)
                    if (
                        problem := check(starts, requests, mode == 1 and name in REPLAYING)
                    ) is not None:
                        raise SystemExit(f"{name}, round {r}: {problem}")
                    best[name][mode] = min(best[name][mode], seconds)
                    gc.collect()
    finally:
        gc.enable()
    return best


async def count_trips(
    variants: list[Variant], real: Services, relays: dict[str, Relay]
) -> dict[str, list[tuple[float, str]]]:
    """Per variant, (round trips per request, what they were) for first runs and replays."""
    statements: Counter[str] = Counter()
    services = Services(
        redis=via(real.redis, relays["redis"].port) if "redis" in relays else real.redis,
        postgres=via(real.postgres, relays["postgres"].port)
        if "postgres" in relays
        else real.postgres,
        mysql=via(real.mysql, relays["mysql"].port) if "mysql" in relays else real.mysql,
        statements=statements,
    )
    counted: dict[str, list[tuple[float, str]]] = {}
    for variant in variants:
        if variant.server not in relays:
            continue
        relay = relays[variant.server]
        async with AsyncExitStack() as stack:
            app, closers = await variant.build(services)
            for close in closers:
                stack.push_async_callback(close)
            keys = [f"{TAG}-count-{VARIANTS.index(variant)}-{i}" for i in range(COUNTED + 5)]
            await run(app, scopes(keys[COUNTED:]))  # connect, load scripts, prepare statements
            await run(app, scopes([keys[COUNTED]] * 3))
            cells = []
            for batch in (keys[:COUNTED], [keys[COUNTED]] * COUNTED):
                relay.take()
                statements.clear()
                await run(app, scopes(batch))
                trips, commands = relay.take()
                what = commands if variant.server == "redis" else statements
                cells.append((trips / COUNTED, describe(what)))
            counted[variant.name] = cells
    return counted


def describe(counts: Counter[str]) -> str:
    parts = []
    for name, n in counts.items():
        per = n / COUNTED
        parts.append(name if per == 1 else f"{name} x{per:g}")
    return ", ".join(parts) or "nothing"


def report(
    best: dict[str, list[float]],
    trips: dict[str, list[tuple[float, str]]],
    requests: int,
    rounds: int,
) -> None:
    base = best["bare starlette"]
    print(
        f"stores: {requests} requests x {rounds} rounds per cell, best round, in process; "
        f"POST with a {len(BODY)}-byte JSON body"
    )
    print(
        f"{'variant':<40} {'first-run us':>12} {'ratio':>6} {'replay us':>10} {'ratio':>6}"
        f" {'trips first':>11} {'trips replay':>12}"
    )
    for name, (first, replay) in best.items():
        counted = trips.get(name)
        t1, t2 = (f"{c[0]:g}" for c in counted) if counted else ("-", "-")
        print(
            f"{name:<40} {first * 1e6:>12.1f} {first / base[0]:>6.2f} {replay * 1e6:>10.1f}"
            f" {replay / base[1]:>6.2f} {t1:>11} {t2:>12}"
        )
    if trips:
        print("\nround trips per request, counted on the wire (and what was sent, per request):")
        for name, cells in trips.items():
            for mode, (count, what) in zip(("first run", "replay"), cells, strict=True):
                print(f"  {name}, {mode}: {count:g} ({what})")
    redis = trips.get("bastion full stack, RedisStore")
    if redis:
        verdicts = [
            f"{mode} {count:g} <= {TARGETS[mode]}: {'met' if count <= TARGETS[mode] else 'MISSED'}"
            for mode, (count, _) in zip(("first run", "replay"), redis, strict=True)
        ]
        print("targets (issue 4, full stack on Redis): " + "; ".join(verdicts))
    for database in ("PostgreSQL", "MariaDB"):
        counted = trips.get(f"bastion full stack, SQLStore/{database}")
        if counted:
            verdicts = [
                f"{mode} {n:g} <= {TARGETS[mode]}: {'met' if n <= TARGETS[mode] else 'MISSED'}"
                for mode, (n, _) in zip(("first run", "replay"), counted, strict=True)
            ]
            print(f"targets (issue 11, full stack on {database}): " + "; ".join(verdicts))
    if "slowapi + asgi-idempotency-header" in best:
        print(
            "note: slowapi checks limits in its endpoint decorators, so inside "
            "asgi-idempotency-header: that stack's replays skip the rate limit, bastion's do not."
        )


async def main(args: argparse.Namespace) -> None:
    requests, rounds = (100, 3) if args.quick else (250, 12)
    services = Services(redis=args.redis_url, postgres=args.postgres_url, mysql=args.mysql_url)
    variants = list(VARIANTS)
    async with AsyncExitStack() as stack:
        if (why := await reachable_redis(services.redis)) is not None:
            print(f"Redis at {services.redis} skipped, unreachable: {why}")
            variants = [v for v in variants if v.server != "redis"]
        else:
            stack.push_async_callback(delete_redis_keys, services.redis, TAG)
        tables, why = await create_tables(services.postgres, f"{TAG}_")
        if tables is None:
            print(f"PostgreSQL at {services.postgres} skipped, unreachable: {why}")
            variants = [v for v in variants if v.server != "postgres"]
        else:
            stack.push_async_callback(drop_tables, tables)
        tables, why = await create_tables(services.mysql, f"{TAG}_")
        if tables is None:
            print(f"MariaDB/MySQL at {services.mysql} skipped, unreachable: {why}")
            variants = [v for v in variants if v.server != "mysql"]
        else:
            stack.push_async_callback(drop_tables, tables)
        apps = await prepare(variants, services, stack)
        best = await time_rounds(apps, requests, rounds)
        measured = [v for v in variants if v.name in apps]
        servers = {v.server for v in measured if v.server is not None}
        defaults = {
            "redis": (services.redis, 6379),
            "postgres": (services.postgres, 5432),
            "mysql": (services.mysql, 3306),
        }
        with ExitStack() as relaying:
            relays = {
                s: relaying.enter_context(Relay(*host_port(*defaults[s]), redis=s == "redis"))
                for s in servers
            }
            trips = await count_trips(measured, services, relays)
    report(best, trips, requests, rounds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--redis-url", default=REDIS_URL, help=f"default: {REDIS_URL}")
    parser.add_argument("--postgres-url", default=POSTGRES_URL, help=f"default: {POSTGRES_URL}")
    parser.add_argument("--mysql-url", default=MYSQL_URL, help=f"default: {MYSQL_URL}")
    asyncio.run(main(parser.parse_args()))
