"""A migrated service on a temporary SQLite file, a fake clock, and a client for it."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from reference_service.app import create_app
from reference_service.db.engine import create_engine
from reference_service.db.migrations import migrate
from reference_service.jobs.memory import InProcessQueue
from reference_service.relayer import SimulatedChain
from reference_service.service import ReferenceService
from reference_service.settings import ProgramSeed, ServiceSettings

from tests.conftest import FakeClock

ADMIN = "test-admin-token"
SECRET = "whsec_test"
WALLETS = [
    "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
    "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
    "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
]


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated database file, copied for each test (migrating is the slow part)."""
    import asyncio

    path = tmp_path_factory.mktemp("template") / "service.db"

    async def build() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        try:
            await migrate(engine)
        finally:
            await engine.dispose()

    asyncio.run(build())
    return path


@pytest.fixture
def database_url(tmp_path: Path, migrated_template: Path) -> str:
    """A fresh migrated SQLite file for one test."""
    target = tmp_path / "service.db"
    shutil.copy(migrated_template, target)
    return f"sqlite+aiosqlite:///{target}"


def make_settings(database_url: str, **overrides: Any) -> ServiceSettings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "admin_token": ADMIN,
        "webhook_secret": SECRET,
        "programs": (ProgramSeed("demo", Decimal(1000), "Demo"),),
    }
    values.update(overrides)
    return ServiceSettings(**values)


@dataclass
class Harness:
    """The app, its service and a client; ``drain`` runs the jobs that are due."""

    app: FastAPI
    client: httpx.AsyncClient
    clock: FakeClock
    registry: CollectorRegistry

    @property
    def service(self) -> ReferenceService:
        service: ReferenceService = self.app.state.service
        return service

    @property
    def queue(self) -> InProcessQueue:
        assert isinstance(self.service.queue, InProcessQueue)
        return self.service.queue

    @property
    def chain(self) -> SimulatedChain:
        assert isinstance(self.service.relayer, SimulatedChain)
        return self.service.relayer

    async def drain(self) -> int:
        return await self.queue.drain()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module to change the service's settings."""
    return {}


@pytest.fixture
def environ() -> dict[str, str]:
    """The environment the app reads its bastion settings and RL_* limits from."""
    return {}


@pytest.fixture
async def harness(
    database_url: str,
    clock: FakeClock,
    settings_overrides: dict[str, Any],
    environ: dict[str, str],
) -> AsyncIterator[Harness]:
    """A started service (lifespan run) whose jobs the test drives with ``drain``."""
    registry = CollectorRegistry()
    app = create_app(
        make_settings(database_url, **settings_overrides),
        registry=registry,
        clock=clock,
        run_jobs=False,
        environ=environ,
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            yield Harness(app, client, clock, registry)


@pytest.fixture
def keys() -> Iterator[str]:
    """Fresh idempotency keys."""
    return (f"key-{i}" for i in range(1_000_000))
