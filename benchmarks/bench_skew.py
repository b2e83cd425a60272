"""Clock skew: what two app instances whose clocks disagree admit from one shared bucket, on
the store's clock (the default) and on their own clocks, and what the store's clock costs.

1. Over-admission. Two worker processes (`skew_worker.py`) whose ``time.time`` is shifted by
   +S and -S seconds before bastion is imported hammer one bucket together. Each episode is a
   fresh bucket: the parent waits until just after a window boundary of the **store's clock**
   (Redis ``TIME``, PostgreSQL ``clock_timestamp()``, MariaDB ``UTC_TIMESTAMP(6)``, SQLite's
   ``julianday('now')``), reads that clock, tells both workers to call ``hit()`` from
   ``--concurrency`` tasks each for half a window (demand far above the limit; the order the
   two are told alternates), and reads the clock again once both answered. An episode counts
   only when both reads fall in one window, so every decision in it was made inside one
   window of the store's clock; the rest are dropped and reported. Its allowance is what one
   bucket on one clock may admit there: the limit (fixed and sliding window: a fresh bucket,
   no previous window), plus for GCRA the tokens refilled between the two reads,
   ``floor(span x limit / window)``. Excess = admitted - allowance. "store clock" leaves each
   worker's store its default; "caller clocks" gives it ``clock=time.time`` (the skewed one).
2. Cost, in this process, GC on: microseconds per two-tier ``hit()`` on each backend with the
   store's clock and with ``clock=time.time``, best and median of interleaved batches, and the
   round trips per decision counted on the wire (`roundtrips.Relay`).

Redis (DB 15), PostgreSQL and MariaDB are the machine's servers, SQLite a temporary file; a
server that does not answer is skipped with a message. Every key and table carries this run's
tag and is deleted at the end (`servers.py`).

    python benchmarks/bench_skew.py [--quick] [--duration S] [--redis-url URL]
                                    [--postgres-url URL] [--mysql-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roundtrips import Relay
from servers import create_tables, delete_redis_keys, drop_tables, host_port, reachable_redis, via

from bastion.stores import RateLimitHit

REDIS_URL = "redis://127.0.0.1:6379/15"
POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
MYSQL_URL = "mysql+asyncmy://root@127.0.0.1:3306/test"
TAG = f"bastionbench_{uuid.uuid4().hex[:12]}"
"""In every Redis key and table name this run makes, so cleaning up touches nothing else."""
WORKER = Path(__file__).with_name("skew_worker.py")
ALGORITHMS = ("fixed_window", "sliding_window", "gcra")
SKEWS = (1.0, 0.25)
MODES = {"store clock": "store", "caller clocks": "caller"}
LIMIT = 20
WINDOW_MS = 1000
MARGIN_MS = 20
"""How long after a boundary of the store's clock an episode starts."""
READS = 100_000
"""Clock reads per statement when timing one read on the server."""
HUGE = 10_000_000
"""The cost run's limit: never reached, so every decision takes the allowed path."""

Clock = Callable[[], Awaitable[int]]


@dataclass
class Backend:
    name: str
    url: str
    prefix: str
    clock: Clock
    """The store's clock, in ms."""
    read: Callable[[bool], Awaitable[Any]]
    """One statement or script that reads the store's clock `READS` times (True), or does the
    same work without reading it (False)."""
    server: str | None = None
    """Its kind for the relay ("redis", "postgres", "mysql"), None when there is no wire."""


@dataclass
class Cell:
    admitted: list[int] = field(default_factory=list)
    allowance: list[int] = field(default_factory=list)
    dropped: int = 0
    errors: int = 0
    error: str | None = None

    def excess(self) -> list[int]:
        return [a - b for a, b in zip(self.admitted, self.allowance, strict=True)]


# -- backends ---------------------------------------------------------------------------------


POSTGRES_NOW = "floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
MYSQL_NOW = "TIMESTAMPDIFF(MICROSECOND, '1970-01-01', UTC_TIMESTAMP(6)) DIV 1000"
SQLITE_NOW = "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)"
"""The clock expressions of the decision routines (`bastion/stores/sql`)."""
REPEAT = {
    "PostgreSQL": f"SELECT count({{}}) FROM generate_series(1, {READS})",
    "MariaDB": f"SELECT BENCHMARK({READS}, {{}})",
    "SQLite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
    f"WHERE x < {READS}) SELECT count({{}}) FROM c",
}
"""Per database, a statement evaluating an expression `READS` times."""
REDIS_REPEAT = """
for i = 1, tonumber(ARGV[1]) do
  if ARGV[2] == '1' then redis.call('TIME') end
end
return 0
"""


async def _sql_backend(
    stack: AsyncExitStack, name: str, url: str, now: str, server: str | None
) -> Backend | None:
    from sqlalchemy import text

    store, why = await create_tables(url, f"{TAG}_")
    if store is None:
        print(f"{name} at {url} skipped, unreachable: {why}")
        return None
    stack.push_async_callback(drop_tables, store)

    async def run(sql: str) -> Any:
        async with store.engine.connect() as conn:
            return (await conn.execute(text(sql))).scalar_one()

    async def clock() -> int:
        return int(await run(f"SELECT {now}"))

    async def read(reading: bool) -> Any:
        return await run(REPEAT[name].format(now if reading else "1"))

    return Backend(name, url, f"{TAG}_", clock, read, server)


async def backends(stack: AsyncExitStack, args: argparse.Namespace) -> list[Backend]:
    found: list[Backend] = []
    if (why := await reachable_redis(args.redis_url)) is not None:
        print(f"Redis at {args.redis_url} skipped, unreachable: {why}")
    else:
        from redis.asyncio import Redis

        stack.push_async_callback(delete_redis_keys, args.redis_url, TAG)
        client = Redis.from_url(args.redis_url)
        stack.push_async_callback(client.aclose)

        async def redis_now() -> int:
            seconds, micros = await client.time()
            return int(seconds) * 1000 + int(micros) // 1000

        async def redis_read(reading: bool) -> Any:
            return await client.eval(REDIS_REPEAT, 0, READS, int(reading))

        found.append(Backend("Redis", args.redis_url, TAG, redis_now, redis_read, "redis"))
    directory = stack.enter_context(tempfile.TemporaryDirectory())
    sqlite_url = f"sqlite+aiosqlite:///{Path(directory) / 'skew.db'}"
    for name, url, now, server in (
        ("PostgreSQL", args.postgres_url, POSTGRES_NOW, "postgres"),
        ("MariaDB", args.mysql_url, MYSQL_NOW, "mysql"),
        ("SQLite", sqlite_url, SQLITE_NOW, None),
    ):
        if (backend := await _sql_backend(stack, name, url, now, server)) is not None:
            found.append(backend)
    return found


def open_store(url: str, prefix: str, **options: Any) -> Any:
    """The store a worker or the cost run decides with; SQLite in WAL mode without a sync
    per commit (as `docs/stores.md` advises), else each decision waits for the disk."""
    if url.startswith("redis"):
        from bastion.stores import RedisStore

        return RedisStore.from_url(url, prefix=prefix, **options)
    from sqlalchemy import event

    from bastion.stores.sql import SQLStore

    store = SQLStore(url=url, table_prefix=prefix, **options)
    if url.startswith("sqlite"):

        @event.listens_for(store.engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    return store


# -- 1. over-admission ------------------------------------------------------------------------


class Worker:
    """A skewed app-instance process, one episode per JSON line."""

    def __init__(self, skew: float) -> None:
        self.skew = skew
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER)],
            env={**os.environ, "BENCH_SKEW": str(skew)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def send(self, spec: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(spec) + "\n")
        self.process.stdin.flush()

    async def answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.to_thread(self.process.stdout.readline)
        if not line:
            raise SystemExit(f"the worker at {self.skew:+g} s exited with {self.process.wait()}")
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


async def run_episode(pair: list[Worker], spec: dict[str, Any], order: int) -> dict[str, Any]:
    for worker in pair[order:] + pair[:order]:
        worker.send(spec)
    answers = [await worker.answer() for worker in pair]
    return {key: sum(a[key] for a in answers) for key in ("admitted", "denied", "errors")} | {
        "error": next((a["error"] for a in answers if a["error"]), None)
    }


async def next_boundary(backend: Backend) -> None:
    """Sleep until ``MARGIN_MS`` after the next window boundary of the store's clock."""
    offset = await backend.clock() - int(time.time() * 1000)
    now = int(time.time() * 1000) + offset
    await asyncio.sleep((WINDOW_MS - now % WINDOW_MS + MARGIN_MS) / 1000)


async def measure_cell(
    pair: list[Worker], backend: Backend, algorithm: str, mode: str, episodes: int, args: Any
) -> Cell:
    base = {
        "url": backend.url,
        "prefix": backend.prefix,
        "clock": mode,
        "algorithm": algorithm,
        "limit": LIMIT,
        "window_ms": WINDOW_MS,
        "concurrency": args.concurrency,
    }
    # connect, load scripts and open the pool before the first timed episode
    await run_episode(pair, {**base, "key": f"warm{uuid.uuid4().hex}:w", "seconds": 0.05}, 0)
    cell = Cell()
    for n in range(episodes):
        spec = {**base, "key": f"skew{uuid.uuid4().hex}:client", "seconds": WINDOW_MS / 2000}
        await next_boundary(backend)
        before = await backend.clock()
        result = await run_episode(pair, spec, n % 2)
        after = await backend.clock()
        cell.errors += result["errors"]
        cell.error = cell.error or result["error"]
        if before // WINDOW_MS != after // WINDOW_MS:
            cell.dropped += 1
            continue
        refill = (after - before) * LIMIT // WINDOW_MS if algorithm == "gcra" else 0
        cell.admitted.append(result["admitted"])
        cell.allowance.append(LIMIT + refill)
    return cell


async def over_admission(
    found: list[Backend], args: Any
) -> dict[tuple[str, str, float, str], Cell]:
    episodes = max(1, round(args.duration * 1000 / WINDOW_MS))
    cells: dict[tuple[str, str, float, str], Cell] = {}
    for skew in SKEWS:
        pair = [Worker(-skew), Worker(skew)]  # the one behind is told first in even episodes
        try:
            for backend in found:
                for algorithm in ALGORITHMS:
                    for label, mode in MODES.items():
                        cells[backend.name, algorithm, skew, label] = await measure_cell(
                            pair, backend, algorithm, mode, episodes, args
                        )
        finally:
            for worker in pair:
                worker.close()
    return cells


# -- 2. cost ----------------------------------------------------------------------------------


def two_tiers(name: str) -> list[RateLimitHit]:
    return [
        RateLimitHit(f"{name}-minute:client", "fixed_window", HUGE, 60_000),
        RateLimitHit(f"{name}-hour:client", "fixed_window", HUGE, 3_600_000),
    ]


async def timed(store: Any, hits: list[RateLimitHit], count: int) -> float:
    begin = time.perf_counter()
    for _ in range(count):
        decisions = await store.hit(hits)
        if not all(d.allowed for d in decisions):
            raise SystemExit(f"a cost decision was denied: {decisions}")
    return (time.perf_counter() - begin) / count


@asynccontextmanager
async def both_stores(backend: Backend, url: str | None = None) -> AsyncIterator[dict[str, Any]]:
    stores = {
        "store clock": open_store(url or backend.url, backend.prefix),
        "caller clock": open_store(url or backend.url, backend.prefix, clock=time.time),
    }
    try:
        yield stores
    finally:
        for store in stores.values():
            await store.aclose()


async def cost(backend: Backend, batch: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per decision of each batch, per mode; the modes interleave batch by batch."""
    seconds: dict[str, list[float]] = {"store clock": [], "caller clock": []}
    async with both_stores(backend) as stores:
        hits = {label: two_tiers(f"cost{uuid.uuid4().hex}") for label in stores}
        for label, store in stores.items():
            await timed(store, hits[label], 20)
        for _ in range(rounds):
            for label, store in stores.items():
                seconds[label].append(await timed(store, hits[label], batch))
    return seconds


async def trips(backend: Backend, relay: Relay, count: int) -> dict[str, float]:
    """Round trips per decision counted on the wire, per mode."""
    counted: dict[str, float] = {}
    async with both_stores(backend, via(backend.url, relay.port)) as stores:
        for label, store in stores.items():
            hits = two_tiers(f"trips{uuid.uuid4().hex}")
            await timed(store, hits, 5)
            relay.take()
            await timed(store, hits, count)
            counted[label] = relay.take()[0] / count
    return counted


async def read_cost(backend: Backend, rounds: int) -> float:
    """Seconds per read of the store's clock on the server: the best statement reading it
    `READS` times less the best doing the same without, so the network and the statement's
    own cost cancel out."""
    best = {True: float("inf"), False: float("inf")}
    for _ in range(rounds):
        for reading in best:
            begin = time.perf_counter()
            await backend.read(reading)
            best[reading] = min(best[reading], time.perf_counter() - begin)
    return max(0.0, best[True] - best[False]) / READS


# -- the run ----------------------------------------------------------------------------------


def report_admission(cells: dict[tuple[str, str, float, str], Cell], args: Any) -> None:
    print(
        f"over-admission: 2 processes at -S and +S s, {args.concurrency} tasks each, one bucket "
        f"(limit {LIMIT}, window {WINDOW_MS / 1000:g} s), fresh per episode; an episode hammers "
        f"{WINDOW_MS / 2000:g} s from {MARGIN_MS} ms after a boundary of the store's clock and "
        "counts only inside one window of it; the one behind is told first in even episodes, "
        "the one ahead in odd ones.\nallowance = limit (GCRA: + the tokens refilled between "
        "the two reads of the store's clock, an upper bound); excess = admitted - allowance; "
        "x = admitted / allowance; over = episodes with excess > 0."
    )
    print(
        f"{'backend':<10} {'algorithm':<14} {'skew':>6} {'mode':<13} {'episodes':>8} "
        f"{'allowance':>9} {'admitted mean':>13} {'max':>4} {'excess mean':>11} {'max':>4} "
        f"{'x mean':>6} {'x max':>6} {'over':>5}"
    )
    for (name, algorithm, skew, mode), cell in cells.items():
        judged = len(cell.admitted)
        episodes = f"{judged}/{judged + cell.dropped}"
        if not judged:
            print(f"{name:<10} {algorithm:<14} {skew:>+6g} {mode:<13} {episodes:>8}  no episode")
            continue
        excess = cell.excess()
        ratios = [a / b for a, b in zip(cell.admitted, cell.allowance, strict=True)]
        over = sum(e > 0 for e in excess)
        print(
            f"{name:<10} {algorithm:<14} {'±' + format(skew, 'g'):>6} {mode:<13} {episodes:>8} "
            f"{statistics.mean(cell.allowance):>9.1f} {statistics.mean(cell.admitted):>13.1f} "
            f"{max(cell.admitted):>4} {statistics.mean(excess):>+11.2f} {max(excess):>+4} "
            f"{statistics.mean(ratios):>6.2f} {max(ratios):>6.2f} {over:>5}"
            + (f"  {cell.errors} errors, e.g. {cell.error}" if cell.errors else "")
        )


def report_cost(
    costs: dict[str, dict[str, list[float]]],
    counted: dict[str, dict[str, float]],
    reads: dict[str, float],
    args: Any,
) -> None:
    batch, rounds = args.batch, args.rounds
    print(
        f"\ncost: one hit() of two fixed-window tiers, in process, GC on, {batch} decisions x "
        f"{rounds} interleaved batches per cell; round trips per decision counted on the wire; "
        f"one read of the store's clock timed on the server ({READS:,} in one statement or "
        "script, less the same without the read, best of 5)"
    )
    print(
        f"{'backend':<10} {'store clock us':>14} {'median':>7} {'caller clock us':>15} "
        f"{'median':>7} {'ratio best':>10} {'median':>7} {'trips store':>11} {'caller':>6} "
        f"{'clock read us':>13} {'of a decision':>13}"
    )
    for name, seconds in costs.items():
        s, c = seconds["store clock"], seconds["caller clock"]
        trips_of = counted.get(name, {})
        t1, t2 = (f"{trips_of[k]:g}" if k in trips_of else "-" for k in seconds)
        print(
            f"{name:<10} {min(s) * 1e6:>14.1f} {statistics.median(s) * 1e6:>7.1f} "
            f"{min(c) * 1e6:>15.1f} {statistics.median(c) * 1e6:>7.1f} "
            f"{min(s) / min(c):>10.3f} {statistics.median(s) / statistics.median(c):>7.3f} "
            f"{t1:>11} {t2:>6} {reads[name] * 1e6:>13.3f} {reads[name] / min(s):>13.5%}"
        )
    print("ratio = store clock / caller clock; of a decision = clock read / best store-clock us")


async def main(args: argparse.Namespace) -> None:
    async with AsyncExitStack() as stack:
        found = await backends(stack, args)
        if not found:
            raise SystemExit("no backend answered")
        cells = await over_admission(found, args)
        costs = {b.name: await cost(b, args.batch, args.rounds) for b in found}
        reads = {b.name: await read_cost(b, 5) for b in found}
        counted: dict[str, dict[str, float]] = {}
        defaults = {"redis": 6379, "postgres": 5432, "mysql": 3306}
        with ExitStack() as relaying:
            for b in found:
                if b.server is not None:
                    target = host_port(b.url, defaults[b.server])
                    relay = relaying.enter_context(Relay(*target, redis=b.server == "redis"))
                    counted[b.name] = await trips(b, relay, 50)
    report_admission(cells, args)
    report_cost(costs, counted, reads, args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--duration", type=float, help="seconds per cell, one episode a window (default 6)"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="tasks per worker")
    parser.add_argument("--redis-url", default=REDIS_URL, help=f"default: {REDIS_URL}")
    parser.add_argument("--postgres-url", default=POSTGRES_URL, help=f"default: {POSTGRES_URL}")
    parser.add_argument("--mysql-url", default=MYSQL_URL, help=f"default: {MYSQL_URL}")
    parsed = parser.parse_args()
    parsed.duration = parsed.duration or (2.0 if parsed.quick else 6.0)
    parsed.batch, parsed.rounds = (100, 3) if parsed.quick else (200, 9)
    asyncio.run(main(parsed))
