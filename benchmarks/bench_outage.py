"""Outages without a latency tax, load without false outages: RedisStore, two configurations.

``old``: the previous defaults (0.25 s socket, connect and pool timeouts: 0.5 s a call with the
pool wait; no circuit breaker), with the previous bound: one deadline from the moment a call
queues for a connection, so the queue's wait is spent from the Redis call's time.
``wall``: the current defaults (1 s, the breaker) with that previous wall-clock bound.
``new``: the current defaults (a 1 s bound on waiting for Redis: a queued call waits while Redis
answers the calls ahead of it, then has 1 s for its reply; a circuit breaker opening after 5
consecutive failures, probing again after 2 s).

1. Load: the full stack (a fail-open fixed window of ``LIMIT`` per client, outside
   `IdempotencyMiddleware`) on a private, healthy redis-server, while busy-loop processes
   (one per core) saturate the CPU; bursts of ``--concurrency`` concurrent requests from one
   client, fresh Idempotency-Key each. Spurious failures are responses a store failure
   decided although Redis was up (a 503, or a 200 without a ``RateLimit`` field: decided by
   fail-open); failed store calls counts every store call that raised (a failed claim or
   completion under fail-open still answers 201); over-admission is how many more than
   ``LIMIT`` were let through. ``--stall S``: one request per burst hogs the event loop for
   S seconds in its handler, as CPU-heavy work or a long GC pause would.
2. Outage: the same stack, ``--concurrency`` concurrent requests per burst, while Redis is down
   (port closed), frozen (SIGSTOP) and recovering (SIGCONT, then the first bursts); the time
   each request took beyond the healthy median, averaged, and the worst.

Run: ``python benchmarks/bench_outage.py`` (``--quick`` for fewer bursts). It starts its own
redis-server on a free port (``redis-server`` must be on the PATH) and kills it at the end.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bastion import (
    IdempotencyMiddleware,
    IdempotencySettings,
    RateLimitMiddleware,
    RateLimitSettings,
    Tier,
)
from bastion.exceptions import StoreUnavailable
from bastion.stores._breaker import CircuitBreaker
from bastion.stores._redis import RedisStore

LIMIT = 100_000
"""Per client per hour for the load run: never reached, so every 200 should carry RateLimit."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A private redis-server: start, kill (port closed), freeze, thaw."""

    def __init__(self, directory: str) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server is not on the PATH")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.directory],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        sys.exit("private redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def signal(self, sig: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)


@contextmanager
def saturated_cpu(processes: int) -> Iterator[None]:
    """``processes`` busy loops (like ``stress --cpu N``) for the duration of the block."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        time.sleep(0.5)  # let the scheduler spread them before measuring
        yield
    finally:
        for process in busy:
            process.kill()
            process.wait()


class WallClockBound(RedisStore):
    """The bound before `Gate`: one deadline from the moment the call queued, covering the
    queue, and the part after the queue counted by the breaker."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue = anyio.Semaphore(16)

    async def _bounded(self, operation: str, call: Callable[[], Awaitable[Any]]) -> Any:
        deadline = anyio.current_time() + self.timeout
        self.breaker.check()
        try:
            with anyio.fail_at(deadline):
                await self._queue.acquire()
        except TimeoutError as exc:
            raise StoreUnavailable(f"no free redis connection for {operation}") from exc
        try:
            return await self.breaker.call(lambda: self._before_deadline(deadline, call))
        finally:
            self._queue.release()

    async def _before_deadline(self, deadline: float, call: Callable[[], Awaitable[Any]]) -> Any:
        try:
            with anyio.fail_at(deadline):
                return await call()
        except TimeoutError as exc:
            raise StoreUnavailable("redis did not answer in time") from exc


CONFIGS: dict[str, Callable[[str], RedisStore]] = {
    "old": lambda url: WallClockBound(
        url=url,
        timeout=0.5,
        socket_timeout=0.25,
        pool_timeout=0.25,
        retries=0,
        breaker=CircuitBreaker(failures=0),
    ),
    "wall": lambda url: WallClockBound(url=url),
    "new": lambda url: RedisStore(url=url),
}
"""``old`` as the previous defaults behaved: 0.25 s socket timeouts, at most 0.25 s waiting for
a connection plus 0.25 s for the reply (0.5 s in all), no breaker, no retries."""


def build(store: RedisStore) -> Any:
    async def create(request: Request) -> Response:
        stall = float(request.headers.get("x-stall", "0"))
        end = time.perf_counter() + stall
        while time.perf_counter() < end:
            pass  # a handler hogging the event loop (CPU-heavy work, a long GC pause)
        return JSONResponse({"ok": True}, status_code=201)

    app = Starlette(routes=[Route("/orders", create, methods=["POST"])])
    app = IdempotencyMiddleware(
        app, store=store, settings=IdempotencySettings(include=("/orders",), fail_open=True)
    )
    tier = Tier(name="client", limit=LIMIT, window=3600, fail_open=True)
    return RateLimitMiddleware(app, store=store, settings=RateLimitSettings(tiers=(tier,)))


@dataclass
class Burst:
    latencies: list[float] = field(default_factory=list)
    spurious: int = 0
    admitted: int = 0


async def burst(
    app: Any, size: int, tag: str, peer: str = "203.0.113.9", stall: float = 0.0
) -> Burst:
    result = Burst()
    transport = httpx.ASGITransport(app=app, client=(peer, 50_000))
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

        async def one(i: int) -> None:
            started = time.perf_counter()
            response = await client.post(
                "/orders",
                content=b"{}",
                headers={
                    "Idempotency-Key": f"{tag}-{i}",
                    **({"x-stall": str(stall)} if stall and i == size // 4 else {}),
                },
            )
            result.latencies.append(time.perf_counter() - started)
            if response.status_code < 300:
                result.admitted += 1
            if response.status_code >= 500 or "ratelimit" not in response.headers:
                result.spurious += 1

        async with anyio.create_task_group() as tg:
            for i in range(size):
                tg.start_soon(one, i)
    return result


def count_failures(store: RedisStore) -> list[int]:
    """A one-item list counting the store calls that raised (a fail-open policy hides most of
    them from the responses: a failed claim or completion still answers 201)."""
    failed = [0]
    bounded = store._bounded

    async def counted(operation: str, call: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await bounded(operation, call)
        except StoreUnavailable:
            failed[0] += 1
            raise

    store._bounded = counted  # type: ignore[method-assign]
    return failed


async def load_run(
    url: str, name: str, bursts: int, size: int, stall: float = 0.0
) -> tuple[int, int, int, int]:
    store = CONFIGS[name](url)
    failed = count_failures(store)
    app = build(store)
    spurious = admitted = total = 0
    try:
        for b in range(bursts):
            result = await burst(app, size, f"load-{name}-{time.time_ns()}-{b}", stall=stall)
            spurious += result.spurious
            admitted += result.admitted
            total += size
    finally:
        await store.aclose()
    return total, spurious, admitted, failed[0]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"


async def outage_run(server: Server, name: str, bursts: int, size: int) -> dict[str, Burst]:
    """Each fault on a fresh store (its breaker closed) warmed up by one healthy burst."""
    phases: dict[str, Burst] = {}

    async def phase(app: Any, label: str) -> None:
        merged = Burst()
        for b in range(bursts):
            one = await burst(app, size, f"{label}-{name}-{time.time_ns()}-{b}")
            merged.latencies += one.latencies
        phases[label] = merged

    async def fresh() -> tuple[RedisStore, Any]:
        store = CONFIGS[name](server.url)
        app = build(store)
        await burst(app, size, f"warm-{name}-{time.time_ns()}")
        return store, app

    store, app = await fresh()
    await phase(app, "healthy")
    server.kill()
    await phase(app, "down")
    server.start()
    await store.aclose()
    store, app = await fresh()
    server.signal(signal.SIGSTOP)
    try:
        await phase(app, "frozen")
    finally:
        server.signal(signal.SIGCONT)
    await phase(app, "recovering")
    await store.aclose()
    return phases


async def main(quick: bool, concurrency: int, stall: float) -> None:
    logging.getLogger("bastion").setLevel(logging.CRITICAL)  # each failure is counted here
    bursts = 3 if quick else 10
    cores = os.cpu_count() or 2
    with tempfile.TemporaryDirectory() as directory:
        server = Server(directory)
        server.start()
        try:
            print(f"load: {bursts} bursts of {concurrency} concurrent requests, "
                  f"{2 * cores} busy-loop processes saturating {cores} cores, Redis healthy"
                  + (f", one handler per burst blocking the loop {stall} s" if stall else ""))  # fmt: skip
            print(
                f"{'config':8} {'requests':>9} {'spurious failures':>18} {'over-admitted':>14}"
                f" {'failed store calls':>19}"
            )
            with saturated_cpu(2 * cores):
                for name in CONFIGS:
                    total, spurious, admitted, failed = await load_run(
                        server.url, name, bursts, concurrency, stall
                    )
                    over = max(0, admitted - LIMIT)
                    print(f"{name:8} {total:9d} {spurious:18d} {over:14d} {failed:19d}")
            print()
            print(f"outage: {bursts} bursts of {concurrency} concurrent requests per phase; "
                  "ms per request beyond the healthy median (mean / max)")  # fmt: skip
            header = f"{'phase':14}" + "".join(
                f"{name + ' mean':>12}{name + ' max':>11}" for name in CONFIGS
            )
            print(header)
            results = {
                name: await outage_run(server, name, bursts, concurrency) for name in CONFIGS
            }
            for label in results["new"]:
                row = f"{label:14}"
                for name in CONFIGS:
                    base = statistics.median(results[name]["healthy"].latencies)
                    extra = [max(0.0, x - base) for x in results[name][label].latencies]
                    row += f"{ms(statistics.mean(extra)):>12}{ms(max(extra)):>11}"
                print(row)
        finally:
            server.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--stall",
        type=float,
        default=0.0,
        help="seconds one request per load burst blocks the event loop (default 0)",
    )
    args = parser.parse_args()
    anyio.run(main, args.quick, args.concurrency, args.stall)
