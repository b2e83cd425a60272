"""Real mode on the machine's PostgreSQL and Redis: a throw-away database per test session,
a unique BullMQ/Redis key prefix per test, and helpers shared by the real-mode tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from reference_service.app import create_app
from reference_service.jobs.bull import BullQueue, QueueWorkers
from reference_service.service import ReferenceService
from reference_service.settings import ProgramSeed, ServiceSettings
from sqlalchemy.engine import make_url

from tests.conftest import service_url
from tests.reference_service.helpers import SIGNATURE, key

ADMIN = "real-admin-token"
SECRET = "whsec_real_test"
ROOT = Path(__file__).resolve().parents[2]
REAL = [pytest.mark.redis, pytest.mark.postgres]


def random_wallet() -> str:
    return "0x" + secrets.token_hex(20)


async def _create_database(url: str, template: str | None = None) -> tuple[str, str]:
    """A new database beside the one ``url`` names, migrated or copied from ``template``:
    (its URL, its name)."""
    import asyncpg
    from reference_service.db.engine import create_engine
    from reference_service.db.migrations import migrate

    parsed = make_url(url)
    name = f"bastion_svc_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username or "postgres",
        password=parsed.password,
        database=parsed.database or "postgres",
    )
    try:
        copy = f' TEMPLATE "{template}"' if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{copy}')
    finally:
        await conn.close()
    new_url = parsed.set(drivername="postgresql+asyncpg", database=name)
    rendered = new_url.render_as_string(hide_password=False)
    if template:
        return rendered, name
    engine = create_engine(rendered)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()
    return rendered, name


async def _drop_database(url: str, name: str) -> None:
    import asyncpg

    parsed = make_url(url)
    conn = await asyncpg.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username or "postgres",
        password=parsed.password,
        database=parsed.database or "postgres",
    )
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_template() -> Iterator[tuple[str, str]]:
    """A migrated PostgreSQL database for this session to copy: (server URL, its name)."""
    base = service_url("BASTION_TEST_POSTGRES_URL")
    _, name = asyncio.run(_create_database(base))
    yield base, name
    asyncio.run(_drop_database(base, name))


@pytest.fixture
def pg_url(pg_template: tuple[str, str]) -> Iterator[str]:
    """A throw-away migrated database for one test (a copy of the template), dropped after."""
    base, template = pg_template
    url, name = asyncio.run(_create_database(base, template))
    yield url
    asyncio.run(_drop_database(base, name))


@pytest.fixture
def redis_url() -> str:
    return service_url("BASTION_TEST_REDIS_URL")


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own (queues, chain, rate limits); its keys deleted after."""
    value = f"svctest-{secrets.token_hex(5)}"
    yield value

    async def clean() -> None:
        from redis.asyncio import Redis

        client = Redis.from_url(redis_url)
        try:
            batch = [k async for k in client.scan_iter(match=f"{value}:*", count=500)]
            for i in range(0, len(batch), 500):
                await client.delete(*batch[i : i + 500])
        finally:
            await client.aclose()

    asyncio.run(clean())


def real_settings(pg_url: str, redis_url: str, prefix: str, **overrides: Any) -> ServiceSettings:
    values: dict[str, Any] = {
        "mode": "real",
        "database_url": pg_url,
        "redis_url": redis_url,
        "queue_prefix": prefix,
        "admin_token": ADMIN,
        "webhook_secret": SECRET,
        "programs": (ProgramSeed(f"p-{prefix}", Decimal(1_000_000), "Test"),),
        "job_backoff_seconds": 0.05,
        "job_timeout_seconds": 10.0,
        "auto_migrate": False,
    }
    values.update(overrides)
    return ServiceSettings(**values)


def real_environ(settings: ServiceSettings, **extra: str) -> dict[str, str]:
    """The same settings as environment variables, for subprocesses."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BASTION_SERVICE_", "RL_", "BASTION_IDEMPOTENCY", "BASTION_RATE"))
    }
    env.update(
        {
            "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'examples/reference_service/src'}",
            "BASTION_SERVICE_MODE": "real",
            "BASTION_SERVICE_DATABASE_URL": settings.database_url,
            "BASTION_SERVICE_REDIS_URL": settings.redis_url,
            "BASTION_SERVICE_QUEUE_PREFIX": settings.queue_prefix,
            "BASTION_SERVICE_ADMIN_TOKEN": settings.admin_token,
            "BASTION_SERVICE_WEBHOOK_SECRET": settings.webhook_secret,
            "BASTION_SERVICE_PROGRAMS": ",".join(f"{p.id}:{p.budget}" for p in settings.programs),
            "BASTION_SERVICE_JOB_BACKOFF_SECONDS": str(settings.job_backoff_seconds),
            "BASTION_SERVICE_JOB_TIMEOUT_SECONDS": str(settings.job_timeout_seconds),
            "BASTION_SERVICE_WORKER_LOCK_SECONDS": str(settings.worker_lock_seconds),
            "BASTION_SERVICE_STALLED_CHECK_SECONDS": str(settings.stalled_check_seconds),
        }
    )
    env.update(extra)
    return env


@dataclass
class Real:
    """A real-mode app driven through HTTP, and (optionally) queue workers in this loop."""

    app: FastAPI
    client: httpx.AsyncClient
    settings: ServiceSettings
    workers: QueueWorkers | None

    @property
    def service(self) -> ReferenceService:
        service: ReferenceService = self.app.state.service
        return service

    @property
    def program(self) -> str:
        return self.settings.programs[0].id

    admin = {"Authorization": f"Bearer {ADMIN}"}

    async def register(self, wallet: str) -> None:
        response = await self.client.post("/api/register", json={"wallet": wallet}, headers=key())
        assert response.status_code == 201, response.text

    async def claim(self, wallet: str, amount: str = "1") -> dict[str, Any]:
        response = await self.client.post(
            "/api/v2/claims",
            json={
                "wallet": wallet,
                "program_id": self.program,
                "amount": amount,
                "signature": SIGNATURE,
            },
            headers=key(),
        )
        assert response.status_code == 202, response.text
        intent: dict[str, Any] = response.json()["intent"]
        return intent

    async def intent(self, intent_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/intents/{intent_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def dlq(self) -> dict[str, Any]:
        response = await self.client.get("/api/admin/dlq", headers=self.admin)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def faults(self, fail_rate: float = 0.0, hang_rate: float = 0.0) -> None:
        response = await self.client.put(
            "/api/admin/relayer/faults",
            json={"fail_rate": fail_rate, "hang_rate": hang_rate},
            headers=self.admin,
        )
        assert response.status_code == 200, response.text


async def eventually(
    check: Callable[[], Awaitable[Any]], *, within: float = 60.0, every: float = 0.1
) -> Any:
    """Poll ``check`` until it returns something truthy: waiting on another process's state,
    which no event of ours can signal. The bound only stops a hung test."""
    with anyio.fail_after(within):
        while True:
            result = await check()
            if result:
                return result
            await anyio.sleep(every)


@contextlib.asynccontextmanager
async def start_real(
    settings: ServiceSettings, *, workers: bool, environ: dict[str, str] | None = None
) -> AsyncIterator[Real]:
    """The app's lifespan, a client, and queue workers in this event loop if asked."""
    app = create_app(settings, registry=CollectorRegistry(), environ=environ or {})
    async with app.router.lifespan_context(app):
        service: ReferenceService = app.state.service
        runner: QueueWorkers | None = None
        if workers:
            assert isinstance(service.queue, BullQueue)
            runner = QueueWorkers(
                BullQueue(
                    settings.redis_url, prefix=settings.queue_prefix, options=service.job_options
                ),
                lock_seconds=settings.worker_lock_seconds,
                stalled_check_seconds=settings.stalled_check_seconds,
            )
            service.register_handlers(runner)
            await runner.start(service.schedules())
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
                yield Real(app, client, settings, runner)
        finally:
            if runner is not None:
                await runner.close(force=True)
                await runner.queue.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``python -m reference_service.cli ARGS`` in its own process, output to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "reference_service.cli", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
