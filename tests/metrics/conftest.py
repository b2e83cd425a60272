"""Shared helpers for the metrics tests: a fresh registry per test, sample lookups, clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from prometheus_client import CollectorRegistry

from bastion.typing import ASGIApp


@pytest.fixture
def registry() -> CollectorRegistry:
    """A registry of its own for each test, so counts never leak between tests."""
    return CollectorRegistry()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value, 0 when the series does not exist (yet)."""
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def label_values(registry: CollectorRegistry, name: str, label: str) -> set[str]:
    """Every value ``label`` takes across the samples of metric family ``name``."""
    values: set[str] = set()
    for family in registry.collect():
        if family.name == name:
            values.update(s.labels[label] for s in family.samples if label in s.labels)
    return values


@asynccontextmanager
async def client(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to ``app`` in process."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c
