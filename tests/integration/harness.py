"""Processes for the cross-process tests: shared stores, uvicorn workers, client workers.

``STORE_URLS`` is the one table of shared stores the cross-process tests run against; each
entry is a context manager factory yielding a `SharedStore` isolated for one test (a unique
Redis prefix, PostgreSQL tables of its own made before any worker starts, …) and cleaning up
afterwards. Add a backend by adding a row. Every process started here is killed through its
process group when its context exits, whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.conftest import service_url
from tests.stores.redis_support import delete_prefix, free_port, unique_prefix

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 20.0
SQL_POOL = {"pool_size": 4, "max_overflow": 4}
"""Connections per worker process: 4 workers stay well inside a shared server's 100."""
REDIS_TIMEOUTS = {"timeout": 5.0}
"""These runs prove counting, not failing fast (test_outage.py does): on a busy 2-core machine
200 requests in flight can starve an event loop past the 0.25 s default, and a timed-out call
would be a 503 here, not a wrong count."""


@dataclass(frozen=True)
class SharedStore:
    """What every process needs to build the same store: `from_url`'s URL and options."""

    url: str
    options: dict[str, Any] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """The variables cross_process_app reads to build its store."""
        return {"BASTION_STORE_URL": self.url, "BASTION_STORE_OPTIONS": json.dumps(self.options)}


@contextmanager
def redis_store_url() -> Iterator[SharedStore]:
    """The shared test Redis with a prefix of this test's own, deleted afterwards."""
    url = service_url("BASTION_TEST_REDIS_URL")
    prefix = unique_prefix()
    try:
        yield SharedStore(url, {"prefix": prefix, **REDIS_TIMEOUTS})
    finally:
        anyio.run(delete_prefix, url, prefix)


async def _sql_tables(shared: SharedStore, *, create: bool) -> None:
    from bastion.stores.sql import SQLStore

    store = SQLStore.from_url(shared.url, **shared.options)
    try:
        if create:
            await store.create_tables()
        else:
            async with store.engine.begin() as conn:
                await conn.run_sync(store.metadata.drop_all)
    finally:
        await store.aclose()


@contextmanager
def postgres_store_url() -> Iterator[SharedStore]:
    """The shared test PostgreSQL with tables of this test's own: created before any worker
    starts (so no worker races to create them), dropped afterwards."""
    with _sql_store_url("BASTION_TEST_POSTGRES_URL") as shared:
        yield shared


@contextmanager
def mysql_store_url() -> Iterator[SharedStore]:
    """The shared test MariaDB, like `postgres_store_url`."""
    with _sql_store_url("BASTION_TEST_MYSQL_URL") as shared:
        yield shared


@contextmanager
def _sql_store_url(variable: str) -> Iterator[SharedStore]:
    url = service_url(variable)
    options = {"table_prefix": f"x{uuid.uuid4().hex[:12]}_", "engine_options": SQL_POOL}
    shared = SharedStore(url, options)
    try:
        anyio.run(lambda: _sql_tables(shared, create=True))
        yield shared
    finally:
        anyio.run(lambda: _sql_tables(shared, create=False))


StoreFactory = Callable[[], AbstractContextManager[SharedStore]]

STORE_URLS: list[Any] = [
    pytest.param(redis_store_url, marks=pytest.mark.redis, id="redis"),
    pytest.param(postgres_store_url, marks=pytest.mark.postgres, id="postgres"),
    pytest.param(mysql_store_url, marks=pytest.mark.mysql, id="mysql"),
]
"""Every shared store the cross-process proofs run against."""


def window_start_offset(window: int) -> float:
    """Seconds to add to the wall clock so that "now" is one second into a fresh window.

    Fixed windows are aligned to the clock; a run that straddled a boundary would see two
    quotas. Every process of a run shifts its clock by this same offset, so they all agree
    and the run has ``window - 1`` seconds before the next boundary.
    """
    return 1.0 - time.time() % window


def create_side_effect_table(path: str) -> None:
    """The side-effect table of cross_process_app, made before its workers start."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE side_effects (id INTEGER PRIMARY KEY, pid INTEGER, body BLOB)")
        conn.commit()
    finally:
        conn.close()


def count_side_effects(path: str) -> int:
    """How many times the handler of cross_process_app really ran."""
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM side_effects").fetchone()[0])
    finally:
        conn.close()


def _stop(process: subprocess.Popen[Any]) -> None:
    """End a process group this harness started: politely, then for sure."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    else:  # the supervisor is gone; make sure no orphaned worker survives it
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _environment(extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@contextmanager
def uvicorn_workers(app: str, env: dict[str, str], log: Path, *, workers: int = 4) -> Iterator[str]:
    """Serve ``app`` with ``uvicorn --workers``; yield its base URL once every worker answers.

    The server's output goes to ``log`` (a pipe nobody reads would fill up and block it).
    """
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=_environment(env),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown reaches every worker
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_workers(process, base_url, workers, log)
        yield base_url
    finally:
        _stop(process)


def _wait_for_workers(
    process: subprocess.Popen[Any], base_url: str, workers: int, log: Path
) -> None:
    """Poll with fresh connections until ``workers`` distinct processes have answered."""
    seen: set[str] = set()
    deadline = time.monotonic() + READY_TIMEOUT
    while len(seen) < workers:
        if process.poll() is not None:
            pytest.fail(f"uvicorn exited with {process.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"only {len(seen)} of {workers} uvicorn workers answered in time")
        try:
            response = httpx.get(f"{base_url}/healthz", timeout=1.0)
            seen.add(response.headers["x-worker-pid"])
        except httpx.TransportError:
            time.sleep(0.05)


def run_workers(module: str, args: list[str], *, processes: int) -> list[Any]:
    """Run ``processes`` copies of ``python -m module *args`` and release them all at once.

    Each worker prints ``ready`` when it is set up, waits for a line on stdin, does its work
    and prints one JSON document, which is returned in start order.
    """
    command = [sys.executable, "-m", module, *args]
    started: list[subprocess.Popen[str]] = []
    try:
        for _ in range(processes):
            started.append(
                subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=_environment({}),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )
            )
        for process in started:  # every worker set up: now they fire together
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            if line != "ready":
                _, stderr = process.communicate(timeout=10)
                pytest.fail(f"{module} did not start: {line!r}\n{stderr}")
        for process in started:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        results = []
        for process in started:
            stdout, stderr = process.communicate(timeout=30)
            assert process.returncode == 0, stderr
            results.append(json.loads(stdout))
        return results
    finally:
        for process in started:
            _stop(process)


def run_hit_workers(
    shared: SharedStore, key: str, *, processes: int, hits: int
) -> list[dict[str, int]]:
    """Run ``processes`` hit workers that fire ``hits`` concurrent store hits each."""
    args = [shared.url, json.dumps(shared.options), key, str(hits), str(time.time())]
    return run_workers("tests.integration.hit_worker", args, processes=processes)


def run_client_workers(
    base_url: str, path: str, *, processes: int, requests: int
) -> list[list[dict[str, Any]]]:
    """Run ``processes`` HTTP client processes that each send ``requests`` concurrent POSTs
    to ``path``; each returns one summary per response (see client_worker)."""
    args = [base_url, path, str(requests)]
    return run_workers("tests.integration.client_worker", args, processes=processes)
