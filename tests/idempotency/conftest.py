"""Fixtures building the test API in each framework around a memory store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from bastion import IdempotencySettings
from bastion.stores import MemoryStore
from tests.conftest import FakeClock
from tests.idempotency.apps import FRAMEWORKS, Backend, build

Factory = Callable[..., httpx.AsyncClient]


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    """Each supported framework in turn."""
    return str(request.param)


@pytest.fixture
def backend() -> Backend:
    """Counts handler runs."""
    return Backend()


@pytest.fixture
def store(clock: FakeClock) -> MemoryStore:
    """A memory store on the fake clock."""
    return MemoryStore(clock=clock)


@pytest.fixture
async def make_client(
    framework: str, backend: Backend, store: MemoryStore
) -> AsyncIterator[Factory]:
    """Builds a client for the framework's app with the given settings and options."""
    clients: list[httpx.AsyncClient] = []

    def factory(settings: IdempotencySettings | None = None, **options: Any) -> httpx.AsyncClient:
        app = build(
            framework,
            backend,
            options.pop("store", store),
            settings or IdempotencySettings(require_key=("/charge",)),
            **options,
        )
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
            base_url="http://test",
        )
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.aclose()


@pytest.fixture
def client(make_client: Factory) -> httpx.AsyncClient:
    """A client for the app with the default test settings."""
    return make_client()
