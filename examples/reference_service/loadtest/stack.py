"""The service under load: a throw-away PostgreSQL database, a Redis prefix of its own, and
``bastion-service serve --mode real`` with API and queue-worker processes on loopback.

Everything is private to one run (the database is created and dropped, the Redis keys share
a fresh prefix and are deleted), so a run never touches a deployment's data and parallel runs
do not meet.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy.engine import make_url

__all__ = ["ADMIN_TOKEN", "Stack", "StackOptions", "running_stack"]

ROOT = Path(__file__).resolve().parents[3]
ADMIN_TOKEN = "load-admin-" + secrets.token_hex(8)
WEBHOOK_SECRET = "whsec_load_" + secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class StackOptions:
    postgres_url: str
    redis_url: str
    api_workers: int = 4
    queue_workers: int = 2
    fail_rate: float = 0.2
    hang_rate: float = 0.02
    program_budget: int = 1_000_000_000
    trusted_proxies: str = "127.0.0.1"
    job_timeout_seconds: float = 3.0
    relayer_timeout_seconds: float = 3.0
    job_backoff_seconds: float = 0.2
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass
class Stack:
    """A running service: its URL, database, Redis prefix and metrics directory."""

    url: str
    database_url: str
    redis_url: str
    prefix: str
    program: str
    metrics_dir: Path
    log: Path
    admin_token: str = ADMIN_TOKEN
    process: subprocess.Popen[bytes] | None = None

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}


def _connect_kwargs(url: str) -> dict[str, object]:
    parsed = make_url(url)
    return {
        "host": parsed.host or "127.0.0.1",
        "port": parsed.port or 5432,
        "user": parsed.username or "postgres",
        "password": parsed.password,
        "database": parsed.database or "postgres",
    }


async def _create_database(base: str) -> tuple[str, str]:
    import asyncpg

    name = f"bastion_load_{secrets.token_hex(5)}"
    conn = await asyncpg.connect(**_connect_kwargs(base))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = make_url(base).set(drivername="postgresql+asyncpg", database=name)
    return url.render_as_string(hide_password=False), name


async def _drop_database(base: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(**_connect_kwargs(base))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _delete_prefix(redis_url: str, prefix: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    try:
        batch = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for i in range(0, len(batch), 1000):
            await client.delete(*batch[i : i + 1000])
    finally:
        await client.aclose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _environ(
    options: StackOptions, database_url: str, prefix: str, metrics: Path
) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("BASTION_SERVICE_", "BASTION_MODE", "RL_", "BASTION_IDEMPOTENCY", "BASTION_RATE")
        )
        and k not in {"DATABASE_URL", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR"}
    }
    paths = [str(ROOT / "src"), str(ROOT / "examples" / "reference_service" / "src")]
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "BASTION_SERVICE_MODE": "real",
            "BASTION_SERVICE_DATABASE_URL": database_url,
            "BASTION_SERVICE_REDIS_URL": options.redis_url,
            "BASTION_SERVICE_QUEUE_PREFIX": prefix,
            "BASTION_SERVICE_ADMIN_TOKEN": ADMIN_TOKEN,
            "BASTION_SERVICE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "BASTION_SERVICE_PROGRAMS": f"load:{options.program_budget}",
            "BASTION_SERVICE_JOB_BACKOFF_SECONDS": str(options.job_backoff_seconds),
            "BASTION_SERVICE_JOB_TIMEOUT_SECONDS": str(options.job_timeout_seconds),
            "BASTION_SERVICE_RELAYER_TIMEOUT_SECONDS": str(options.relayer_timeout_seconds),
            # every process writes its counters here, and the audit sums them: a scrape of
            # /metrics would only show the one uvicorn worker that answered it
            "PROMETHEUS_MULTIPROC_DIR": str(metrics),
            # the load generator speaks for many client addresses through X-Forwarded-For,
            # which the rate limiter believes only from this trusted proxy (loopback)
            "BASTION_RATELIMIT_TRUSTED_PROXIES": options.trusted_proxies,
        }
    )
    env.update(options.extra_env)
    return env


def _wait_ready(stack: Stack, process: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the service exited with status {process.returncode}; see {stack.log}"
            )
        try:
            response = httpx.get(f"{stack.url}/readyz", timeout=2.0)
            if response.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the service was not ready in time; see {stack.log}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def running_stack(options: StackOptions, workdir: Path, *, keep: bool = False) -> Iterator[Stack]:
    """Create the database and prefix, migrate, start the service, turn relayer faults on;
    stop and delete it all afterwards (unless ``keep``)."""
    database_url, name = asyncio.run(_create_database(options.postgres_url))
    prefix = f"load-{secrets.token_hex(4)}"
    metrics = Path(tempfile.mkdtemp(prefix="bastion-load-metrics-"))
    port = _free_port()
    stack = Stack(
        url=f"http://127.0.0.1:{port}",
        database_url=database_url,
        redis_url=options.redis_url,
        prefix=prefix,
        program="load",
        metrics_dir=metrics,
        log=workdir / "service.log",
    )
    env = _environ(options, database_url, prefix, metrics)
    cli = [sys.executable, "-m", "reference_service.cli"]
    process: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run([*cli, "migrate"], env=env, check=True, capture_output=True, cwd=ROOT)
        with stack.log.open("wb") as log:
            process = subprocess.Popen(
                [
                    *cli,
                    "serve",
                    "--mode",
                    "real",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--workers",
                    str(options.api_workers),
                    "--queue-workers",
                    str(options.queue_workers),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )
        stack.process = process
        _wait_ready(stack, process, time.monotonic() + 120)
        response = httpx.put(
            f"{stack.url}/api/admin/relayer/faults",
            json={"fail_rate": options.fail_rate, "hang_rate": options.hang_rate},
            headers=stack.admin,
            timeout=10.0,
        )
        response.raise_for_status()
        yield stack
    finally:
        if process is not None:
            _stop(process)
        if not keep:
            asyncio.run(_drop_database(options.postgres_url, name))
            asyncio.run(_delete_prefix(options.redis_url, prefix))
            shutil.rmtree(metrics, ignore_errors=True)
