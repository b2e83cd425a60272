"""Shared fixtures: a controllable clock, real-service URLs, the hypothesis CI profile."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from bastion.testing import FakeClock

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture
def clock() -> FakeClock:
    """A fresh fake clock at a fixed instant."""
    return FakeClock()


def service_url(variable: str) -> str:
    """The URL of a real service for a test, or skip (fail under CI) when it is not set."""
    url = os.environ.get(variable)
    if not url:
        if IN_CI:
            pytest.fail(f"{variable} is not set; CI must run every real-service test")
        pytest.skip(f"{variable} is not set: no real server to test against")
    return url


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio; trio-specific tests opt in themselves."""
    return "asyncio"
