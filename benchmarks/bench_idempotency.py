"""Idempotency overhead: a bare app, bastion's IdempotencyMiddleware, fastapi-idempotency.

Every variant wraps the same Starlette app (a POST handler answering a small JSON body) and
runs on its memory store. Requests are direct ASGI calls in one process, so what is measured
is the middleware, not sockets. Two request kinds per middleware:

- first run: a fresh Idempotency-Key on every request (claim, run, capture, store);
- replay: one key repeated (claim finds the stored response and replays it).

A third bastion row runs first requests against a store already holding 100,000 records, to
show that the memory store's cost does not grow with its size. Variants run in interleaved
rounds; each row reports its best round (on a shared machine slower rounds measure the
neighbours) and its median.

    python benchmarks/bench_idempotency.py [--quick]
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
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bastion import IdempotencyMiddleware, IdempotencySettings
from bastion._core.records import StoredResponse
from bastion.stores import MemoryStore

BODY = b'{"amount": 500, "currency": "eur"}'
PRELOADED = 100_000
STORED = StoredResponse(201, ((b"content-type", b"application/json"),), b"{}").encode()


async def charge(request: Request) -> JSONResponse:
    payload = await request.json()
    return JSONResponse({"charged": payload["amount"]}, status_code=201)


ROUTES = [Route("/charge", charge, methods=["POST"])]


def bare() -> Any:
    return Starlette(routes=ROUTES)


def bastion_app(store: MemoryStore | None = None) -> Any:
    settings = IdempotencySettings(max_key_length=64)
    store = store or MemoryStore(max_records=PRELOADED * 2)
    return Starlette(
        routes=ROUTES,
        middleware=[Middleware(IdempotencyMiddleware, store=store, settings=settings)],
    )


async def preloaded_bastion() -> Any:
    store = MemoryStore(max_records=PRELOADED * 2)
    for i in range(PRELOADED):
        await store.claim(f"pre-{i}", "fp", "t", lease_ms=30_000)
        await store.complete(f"pre-{i}", "t", STORED, ttl_ms=86_400_000)
    return bastion_app(store)


def peer_app() -> Any:
    from fastapi_idempotency import IdempotencyMiddleware as PeerMiddleware
    from fastapi_idempotency import MemoryStore as PeerStore

    return Starlette(routes=ROUTES, middleware=[Middleware(PeerMiddleware, store=PeerStore())])


def scope(key: bytes | None) -> dict[str, Any]:
    headers = [
        (b"host", b"bench"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
    ]
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


async def run(app: Any, requests: int, replay: bool, keyed: bool) -> float:
    """Seconds per request; checks every answer is the handler's 201."""
    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    fixed = b"replayed-key"
    scopes = [
        scope(None if not keyed else fixed if replay else b"k-%d" % next(KEYS))
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
    variants: dict[str, tuple[Any, bool, bool]] = {"bare starlette": (bare(), False, False)}
    bastion = bastion_app()
    variants["bastion, first run"] = (bastion, False, True)
    variants["bastion, replay"] = (bastion, True, True)
    variants[f"bastion, first run, {PRELOADED:,} stored"] = (
        await preloaded_bastion(),
        False,
        True,
    )
    try:
        peer = peer_app()
    except ImportError:
        print("fastapi-idempotency is not installed: `python3 dev.py bench` installs it")
    else:
        variants["fastapi-idempotency, first run"] = (peer, False, True)
        variants["fastapi-idempotency, replay"] = (peer, True, True)
    for app, replay, keyed in variants.values():
        await run(app, requests // 10, replay, keyed)  # warm up, and store the replayed key
    samples: dict[str, list[float]] = {name: [] for name in variants}
    gc.disable()
    try:
        for _ in range(rounds):
            for name, (app, replay, keyed) in variants.items():
                samples[name].append(await run(app, requests, replay, keyed))
                gc.collect()
    finally:
        gc.enable()
    base = min(samples["bare starlette"])
    base_median = statistics.median(samples["bare starlette"])
    print(f"idempotency: {requests} requests x {rounds} rounds, in process, memory stores")
    header = (
        f"{'variant':<40} {'best us':>8} {'ratio':>6} {'+us':>7} {'median us':>10} {'ratio':>6}"
    )
    print(header)
    for name, values in samples.items():
        best, median = min(values), statistics.median(values)
        print(
            f"{name:<40} {best * 1e6:>8.1f} {best / base:>6.2f} {(best - base) * 1e6:>7.1f}"
            f" {median * 1e6:>10.1f} {median / base_median:>6.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    asyncio.run(main(parser.parse_args().quick))
