"""Private servers for the fault tests: a redis-server and a PostgreSQL cluster of the test's
own, on free ports, so stopping them harms no other test run; a migrated database on the
cluster; and a tally of answers and latencies per phase of an outage."""

from __future__ import annotations

import asyncio
import collections
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.reference_service.real import _create_database
from tests.stores.postgres_support import PrivatePostgres, private_postgres
from tests.stores.redis_support import PrivateRedis, private_redis


@dataclass
class Servers:
    redis: PrivateRedis
    postgres: PrivatePostgres
    database_url: str


@contextmanager
def private_servers(directory: Path) -> Iterator[Servers]:
    """A private Redis and PostgreSQL, with a migrated database on the latter."""
    with private_redis(directory) as redis, private_postgres() as postgres:
        url, _ = asyncio.run(_create_database(postgres.url))
        yield Servers(redis, postgres, url)


@dataclass
class Phase:
    """What one phase of a run answered: statuses by route, and latencies in seconds."""

    name: str
    statuses: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)

    def record(self, route: str, status: int, started: float) -> None:
        self.statuses[(route, status)] += 1
        self.latencies.append(time.perf_counter() - started)

    def codes(self) -> set[int]:
        return {status for _, status in self.statuses}

    def summary(self) -> str:
        ordered = sorted(self.latencies)
        p95 = ordered[int(len(ordered) * 0.95) - 1] if ordered else 0.0
        median = statistics.median(ordered) if ordered else 0.0
        answers = ", ".join(f"{r} {s}: {n}" for (r, s), n in sorted(self.statuses.items()))
        return (
            f"{self.name}: {len(ordered)} requests, p50 {median * 1000:.1f} ms, "
            f"p95 {p95 * 1000:.1f} ms; {answers}"
        )
