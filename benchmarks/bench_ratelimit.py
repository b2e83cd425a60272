"""Rate limiting overhead: a bare Starlette app, bastion with two tiers, slowapi with two limits.

Requests are direct ASGI calls in one process (no HTTP server, no client library), so what is
measured is the middleware and the app, not sockets. The variants run in interleaved rounds;
each row reports its best round, since on a shared machine the slower rounds measure the
neighbours rather than the code. Every limit is far above the request count, so every
request takes the allowed path, which is what a healthy service mostly sees.

    python benchmarks/bench_ratelimit.py [--quick]
    python benchmarks/bench_ratelimit.py --features [--quick]

``--features`` instead measures what each optional feature costs: the same two tiers with
every feature off, then with one feature on at a time (a shadow tier, a computed cost, a
per-key override served from its cache, a count-on-response tier whose responses do not
match, a concurrency tier), each as its overhead over the bare app and over "features off".
Run it on another checkout (``PYTHONPATH=<checkout>/src``) to compare "features off" across
versions.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from bastion import RateLimitMiddleware, RateLimitSettings, Tier
from bastion.stores import MemoryStore

HUGE = 1_000_000_000


async def endpoint(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


ROUTES = [Route("/api/items", endpoint, methods=["GET"])]


def bare() -> Any:
    return Starlette(routes=ROUTES)


def bastion_app(algorithm: str) -> Callable[[], Any]:
    def build() -> Any:
        settings = RateLimitSettings(
            tiers=(
                Tier(name="burst", limit=HUGE, window=60, algorithm=algorithm),  # type: ignore[arg-type]
                Tier(name="daily", limit=HUGE, window=86_400, algorithm=algorithm),  # type: ignore[arg-type]
            )
        )
        return Starlette(
            routes=ROUTES,
            middleware=[Middleware(RateLimitMiddleware, store=MemoryStore(), settings=settings)],
        )

    return build


def feature_app(**changes: Any) -> Callable[[], Any]:
    """Two sliding-window tiers; ``changes`` set options on the second, ``extra`` adds one."""

    def build() -> Any:
        from bastion.ratelimit import LimitOverrides, costs

        async def plans(key: str) -> int | None:
            return HUGE

        options = dict(changes)
        extra = options.pop("extra", None)
        if options.pop("cost", None) == "header":
            options["cost"] = costs.header("x-cost")
        if options.pop("overrides", None):
            options["overrides"] = LimitOverrides(plans, ttl=3600)
        tiers = [
            Tier(name="burst", limit=HUGE, window=60),
            Tier(name="daily", limit=HUGE, window=86_400, **options),
        ]
        if extra is not None:
            tiers.append(extra)
        settings = RateLimitSettings(tiers=tuple(tiers))
        return Starlette(
            routes=ROUTES,
            middleware=[Middleware(RateLimitMiddleware, store=MemoryStore(), settings=settings)],
        )

    return build


FEATURES: dict[str, Callable[[], Any]] = {
    "bare starlette": bare,
    "features off (2 tiers)": feature_app(),
    "shadow: 2nd tier in shadow": feature_app(shadow=True),
    "cost: 2nd tier by header": feature_app(cost="header"),
    "override: 2nd tier, cached": feature_app(overrides=True),
    "count_when={401}, 200s": feature_app(count_when={401}),
    "concurrency: + a 3rd tier": feature_app(extra=Tier.concurrent("inflight", HUGE)),
}


def slowapi_app() -> Any:
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.middleware import SlowAPIASGIMiddleware
    from slowapi.util import get_remote_address

    limiter = Limiter(
        key_func=get_remote_address,
        default_limits=[f"{HUGE}/minute", f"{HUGE}/day"],
        headers_enabled=True,
    )
    app = Starlette(routes=ROUTES, middleware=[Middleware(SlowAPIASGIMiddleware)])
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    return app


SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/api/items",
    "raw_path": b"/api/items",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"bench"), (b"user-agent", b"bench"), (b"accept", b"*/*")],
    "client": ("203.0.113.7", 50_000),
    "server": ("bench", 80),
}
REQUEST = {"type": "http.request", "body": b"", "more_body": False}


async def receive() -> dict[str, Any]:
    return REQUEST


async def run(app: Any, requests: int) -> float:
    """Seconds per request over ``requests`` sequential calls; checks every answer is 200."""
    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    start = time.perf_counter()
    for _ in range(requests):
        await app(dict(SCOPE), receive, send)
    elapsed = time.perf_counter() - start
    if statuses != [200] * requests:
        raise SystemExit(f"unexpected statuses: {sorted(set(statuses))}")
    return elapsed / requests


async def main(quick: bool, features: bool = False) -> None:
    requests, rounds = (2_000, 3) if quick else (5_000, 15)
    if features:
        await measure(FEATURES, requests, rounds, "features off (2 tiers)")
        return
    variants: dict[str, Callable[[], Any]] = {"bare starlette": bare}
    variants["bastion, 2 tiers sliding_window"] = bastion_app("sliding_window")
    variants["bastion, 2 tiers fixed_window"] = bastion_app("fixed_window")
    variants["bastion, 2 tiers gcra"] = bastion_app("gcra")
    try:
        import slowapi  # noqa: F401
    except ImportError:
        print("slowapi is not installed: `pip install slowapi` to compare with it")
    else:
        variants["slowapi, 2 limits fixed-window"] = slowapi_app
    await measure(variants, requests, rounds, None)


async def measure(
    variants: dict[str, Callable[[], Any]], requests: int, rounds: int, reference: str | None
) -> None:
    """Interleaved rounds of every variant; the best round of each, against the bare app and
    (when given) against ``reference``."""
    apps = {name: build() for name, build in variants.items()}
    for app in apps.values():
        await run(app, requests // 10)  # warm up: imports, caches, first buckets
    samples: dict[str, list[float]] = {name: [] for name in apps}
    gc.disable()
    try:
        for _ in range(rounds):
            for name, app in apps.items():
                samples[name].append(await run(app, requests))
                gc.collect()
    finally:
        gc.enable()
    base = min(samples["bare starlette"])
    print(f"rate limiting: {requests} requests x {rounds} rounds, best round, in process")
    header = f"{'variant':<34} {'us/request':>10} {'ratio':>7} {'overhead us':>12}"
    if reference is not None:
        header += f" {'vs off us':>10}"
    print(header)
    for name, values in samples.items():
        best = min(values)
        line = f"{name:<34} {best * 1e6:>10.1f} {best / base:>7.2f} {(best - base) * 1e6:>12.1f}"
        if reference is not None and name != "bare starlette":
            line += f" {(best - min(samples[reference])) * 1e6:>10.1f}"
        print(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--features", action="store_true", help="the cost of each feature")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.quick, arguments.features))
