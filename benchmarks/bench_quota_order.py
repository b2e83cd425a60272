"""Rate limits outside idempotency, and the OpenTelemetry observer without a tracer: the cost.

The stack is the README's: ``RateLimitMiddleware`` (two tiers, limits far above the request
count) outside ``IdempotencyMiddleware``, both on one memory store, around a bare Starlette
route, called directly over ASGI in one process. Variants: unkeyed requests (which the
limiter must decide as it always did), fresh keyed requests (charged once the claim has
decided), replays (charged nothing), and the two keyed variants again with an `OTelObserver`
on both middleware and no tracer configured (the API's no-op provider). Rounds are
interleaved and each row reports its best round and median, as the other benchmarks do.

    python benchmarks/bench_quota_order.py [--quick]

Run it with ``PYTHONPATH=<other checkout>/src`` to compare versions.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import statistics
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bastion import (
    IdempotencyMiddleware,
    OTelObserver,
    RateLimitMiddleware,
    RateLimitSettings,
    Tier,
)
from bastion.stores import MemoryStore

HUGE = 1_000_000_000
BODY = b'{"amount": 100}'


async def charge(request: Request) -> JSONResponse:
    return JSONResponse({"charged": True}, status_code=201)


def stack(observer: Any = None) -> Any:
    store = MemoryStore(max_records=1_000_000)
    options = {} if observer is None else {"observer": observer}
    tiers = (
        Tier(name="burst", limit=HUGE, window=60),
        Tier(name="daily", limit=HUGE, window=86_400),
    )
    app = Starlette(routes=[Route("/charge", charge, methods=["POST"])])
    inner = IdempotencyMiddleware(app, store=store, **options)
    return RateLimitMiddleware(
        inner, store=store, settings=RateLimitSettings(tiers=tiers), **options
    )


def scope(key: bytes | None) -> dict[str, Any]:
    headers = [(b"host", b"bench"), (b"content-type", b"application/json")]
    if key is not None:
        headers.append((b"idempotency-key", key))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/charge",
        "raw_path": b"/charge",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("203.0.113.7", 50_000),
        "server": ("bench", 80),
    }


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": BODY, "more_body": False}


KEYS = itertools.count()


async def run(app: Any, requests: int, kind: str) -> float:
    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scopes = [
        scope(
            None if kind == "unkeyed" else b"replayed" if kind == "replay" else b"k-%d" % next(KEYS)
        )
        for _ in range(requests)
    ]
    start = time.perf_counter()
    for one in scopes:
        await app(one, receive, send)
    elapsed = time.perf_counter() - start
    if set(statuses) != {201}:
        raise SystemExit(f"unexpected statuses: {sorted(set(statuses))}")
    return elapsed / requests


async def main(quick: bool) -> None:
    requests, rounds = (1_000, 3) if quick else (3_000, 11)
    plain, otel = stack(), stack(OTelObserver())
    variants = {
        "limit > idempotency, unkeyed": (plain, "unkeyed"),
        "limit > idempotency, fresh key": (plain, "fresh"),
        "limit > idempotency, replay": (plain, "replay"),
        "same + OTelObserver, no tracer, fresh": (otel, "fresh"),
        "same + OTelObserver, no tracer, replay": (otel, "replay"),
    }
    for app, kind in variants.values():
        await run(app, requests // 10, kind)  # warm up, and store the replayed key
    samples: dict[str, list[float]] = {name: [] for name in variants}
    gc.disable()
    try:
        for _ in range(rounds):
            for name, (app, kind) in variants.items():
                samples[name].append(await run(app, requests, kind))
                gc.collect()
    finally:
        gc.enable()
    print(f"quota order: {requests} requests x {rounds} rounds, in process, memory store")
    print(f"{'variant':<42} {'best us':>8} {'median us':>10}")
    for name, values in samples.items():
        print(f"{name:<42} {min(values) * 1e6:>8.1f} {statistics.median(values) * 1e6:>10.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    asyncio.run(main(parser.parse_args().quick))
