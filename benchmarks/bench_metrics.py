"""Metrics middleware overhead: bare FastAPI vs bastion vs starlette-exporter vs the instrumentator.

Every variant is the same FastAPI app with one templated route, driven in process by direct ASGI
calls (a hand-built scope, receive and send), so what is measured is the middleware's own cost
on top of FastAPI's, with no server, client or socket in the way. The variants run interleaved,
batch after batch, in one process. The machines are shared and other processes steal whole
batches, so the best batch of each variant (what it costs when undisturbed, as `timeit`
advises) is the figure the verdict uses; the median is printed beside it for honesty. Read the
ratios within one run, not the absolute times.

    python3 dev.py bench                    # every benchmark
    benchmarks/.venv/bin/python benchmarks/bench_metrics.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from bastion import MetricsMiddleware, MetricsSettings

TARGET_US = 10.0  # the budget: at most this much over the bare app


def build_app() -> FastAPI:
    app = FastAPI()

    @app.get("/users/{user_id}")
    async def get_user(user_id: int) -> dict[str, int]:
        return {"id": user_id}

    return app


def bare() -> Any:
    return build_app()


def bastion() -> Any:
    app = build_app()
    app.add_middleware(MetricsMiddleware, registry=CollectorRegistry())
    return app


def bastion_otel_api_only() -> Any:
    app = build_app()
    settings = MetricsSettings(otel=True)
    app.add_middleware(MetricsMiddleware, registry=CollectorRegistry(), settings=settings)
    return app


def starlette_exporter() -> Any:
    from starlette_exporter import PrometheusMiddleware

    app = build_app()
    app.add_middleware(PrometheusMiddleware, group_paths=True)
    return app


def instrumentator() -> Any:
    from prometheus_fastapi_instrumentator import Instrumentator

    app = build_app()
    Instrumentator(registry=CollectorRegistry()).instrument(app)
    return app


VARIANTS: list[tuple[str, Callable[[], Any]]] = [
    ("bare FastAPI", bare),
    ("bastion MetricsMiddleware", bastion),
    ("bastion, OTel on (API only, no SDK)", bastion_otel_api_only),
    ("starlette-exporter", starlette_exporter),
    ("prometheus-fastapi-instrumentator", instrumentator),
]


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: dict[str, Any]) -> None:
    return None


SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.4"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "root_path": "",
    "query_string": b"",
    "headers": [(b"host", b"bench"), (b"accept", b"*/*"), (b"user-agent", b"bench")],
    "client": ("127.0.0.1", 50000),
    "server": ("bench", 80),
}
PATHS = [f"/users/{n}" for n in range(100)]


async def batch(app: Any, requests: int) -> float:
    """Microseconds per request over one batch."""
    paths = PATHS
    gc.collect()
    start = time.perf_counter()
    for n in range(requests):
        path = paths[n % 100]
        await app({**SCOPE, "path": path, "raw_path": path.encode()}, _receive, _send)
    return (time.perf_counter() - start) / requests * 1e6


async def main(quick: bool) -> int:
    rounds, requests = (5, 300) if quick else (40, 500)
    apps: list[tuple[str, Any]] = []
    for name, factory in VARIANTS:
        try:
            apps.append((name, factory()))
        except ImportError as exc:  # a peer not installed: say so rather than fail the run
            print(f"skipping {name}: {exc}", file=sys.stderr)
    for _, app in apps:
        await batch(app, 200)  # builds the middleware stack, warms caches
    results: dict[str, list[float]] = {name: [] for name, _ in apps}
    for _ in range(rounds):
        for name, app in apps:
            results[name].append(await batch(app, requests))
    bare_name = apps[0][0]
    base, base_median = min(results[bare_name]), statistics.median(results[bare_name])
    print(f"\nmetrics middleware on FastAPI, {rounds} rounds x {requests} requests per variant")
    print(
        f"{'variant':<38} {'us/req best':>11} {'ratio':>6} {'+us':>6}"
        f" {'us/req median':>14} {'ratio':>6} {'+us':>6}"
    )
    for name, _ in apps:
        best, median = min(results[name]), statistics.median(results[name])
        print(
            f"{name:<38} {best:>11.1f} {best / base:>6.2f} {best - base:>+6.1f}"
            f" {median:>14.1f} {median / base_median:>6.2f} {median - base_median:>+6.1f}"
        )
    overhead = min(results["bastion MetricsMiddleware"]) - base
    verdict = "within" if overhead <= TARGET_US else "OVER"
    print(
        f"bastion overhead (best batches): {overhead:.1f} us, {verdict} the {TARGET_US:.0f} us target"
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    sys.exit(asyncio.run(main(parser.parse_args().quick)))
