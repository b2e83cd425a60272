"""Processes for the cross-process tests: store URLs, uvicorn workers, hit workers.

``STORE_URLS`` is the one table of shared stores the cross-process tests run against; each
entry is a context manager factory yielding a store URL isolated for one test (a unique Redis
prefix, …) and cleaning up afterwards. Add a backend (e.g. PostgreSQL through SQLStore) by
adding a row. Every process started here is killed when its context exits, whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.conftest import service_url
from tests.stores.redis_support import delete_prefix, free_port, unique_prefix

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 20.0


@contextmanager
def redis_store_url() -> Iterator[str]:
    """The shared test Redis with a prefix of this test's own, deleted afterwards."""
    url = service_url("BASTION_TEST_REDIS_URL")
    prefix = unique_prefix()
    separator = "&" if "?" in url else "?"
    try:
        yield f"{url}{separator}prefix={prefix}"
    finally:
        anyio.run(delete_prefix, url, prefix)


StoreUrlFactory = Callable[[], AbstractContextManager[str]]

STORE_URLS: list[Any] = [
    pytest.param(redis_store_url, marks=pytest.mark.redis, id="redis"),
    # pytest.param(postgres_store_url, marks=pytest.mark.postgres, id="postgres"),
]
"""Every shared store the cross-process proofs run against."""


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


def run_hit_workers(url: str, key: str, *, processes: int, hits: int) -> list[dict[str, int]]:
    """Run ``processes`` hit workers that fire ``hits`` concurrent hits each, all at once."""
    now = time.time()
    command = [sys.executable, "-m", "tests.integration.hit_worker", url, key, str(hits), str(now)]
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
        for process in started:  # every worker connected: now they fire together
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            if line != "ready":
                _, stderr = process.communicate(timeout=10)
                pytest.fail(f"hit worker did not start: {line!r}\n{stderr}")
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
