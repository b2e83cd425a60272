"""The conformance kit as a pytest plugin: enable it with ``-p bastion.check.pytest_plugin``
(or ``pytest_plugins = ["bastion.check.pytest_plugin"]`` in a conftest).

Point it at your service by overriding the ``bastion_target`` fixture (the route and
principals) and the ``bastion_client`` fixture (an ``httpx.AsyncClient`` whose base URL is a
running deployment, or whose transport is ``httpx.ASGITransport(app)``), or with
``--bastion-url``. Then ``bastion_check`` is an async function that runs the checks and
fails the test with the table of failures::

    async def test_conformance(bastion_check):
        await bastion_check()                    # every check
        await bastion_check(only=["idempotency"])

Give ``bastion_sleep`` your fake clock's advance when the app's stores run on one, so the
rate-limit checks wait out ``t`` without sleeping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import httpx
import pytest

from bastion.check import Report, Sleep, Target, run_checks

__all__ = [
    "bastion_check",
    "bastion_client",
    "bastion_sleep",
    "bastion_target",
    "pytest_addoption",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--bastion-url``: the deployment ``bastion_client`` talks to by default."""
    parser.addoption("--bastion-url", default=None, help="base URL for bastion's checks")


@pytest.fixture
def bastion_target() -> Target:
    """The route the checks drive; override it with your route, body and principals."""
    return Target()


@pytest.fixture
async def bastion_client(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """A client for ``--bastion-url``; override it to check an app in-process."""
    url = request.config.getoption("--bastion-url")
    if not url:
        pytest.fail("give --bastion-url or override the bastion_client fixture")
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        yield client


@pytest.fixture
def bastion_sleep() -> Sleep | None:
    """How the rate-limit checks wait: None is real time (`anyio.sleep`)."""
    return None


@pytest.fixture
def bastion_check(
    bastion_client: httpx.AsyncClient, bastion_target: Target, bastion_sleep: Sleep | None
) -> Callable[..., Awaitable[Report]]:
    """Run the checks; the test fails, showing the table, when one fails."""

    async def check(*, only: Iterable[str] = (), target: Target | None = None) -> Report:
        report = await run_checks(
            bastion_client, target or bastion_target, only=only, sleep=bastion_sleep
        )
        if not report.ok:
            pytest.fail("bastion conformance checks failed:\n" + report.table(), pytrace=False)
        return report

    return check
