"""Shared fixtures: a controllable clock, real-service URLs, the hypothesis CI profile."""

from __future__ import annotations

import collections
import os
import shutil
import socket
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

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

RAM_DISK = Path("/dev/shm")
RAM_DISK_MIN_FREE = 2 * 2**30
"""Bytes a tmpfs must have free before the run's temporary files go there (a container's
default 64 MiB /dev/shm is left alone)."""


def _temporary_files_in_ram() -> None:
    """Temporary files (every ``tmp_path``, every SQLite database the tests make) go to RAM
    when the machine has a roomy tmpfs: SQLite syncs each commit to disk, about 10 ms an
    operation on a busy shared disk against under 1 ms in RAM, and the SQLite rows of the
    store suites spent most of their time there. No test is about durability across a power
    cut. A ``TMPDIR`` the user set wins; servers the tests start inherit the choice."""
    if "TMPDIR" in os.environ or not RAM_DISK.is_dir() or not os.access(RAM_DISK, os.W_OK):
        return
    if shutil.disk_usage(RAM_DISK).free < RAM_DISK_MIN_FREE:
        return
    os.environ["TMPDIR"] = str(RAM_DISK)
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again


_temporary_files_in_ram()


@pytest.fixture
def clock() -> FakeClock:
    """A fresh fake clock at a fixed instant."""
    return FakeClock()


SERVICES: dict[str, tuple[str, str]] = {
    "BASTION_TEST_REDIS_URL": ("Redis", "redis://127.0.0.1:6379/15"),
    "BASTION_TEST_POSTGRES_URL": (
        "PostgreSQL",
        "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
    ),
    "BASTION_TEST_MYSQL_URL": ("MySQL/MariaDB", "mysql+asyncmy://root@127.0.0.1:3306/test"),
}
"""Each real-service variable: the service it names and the default URL tried when it is unset."""
PROBE_TIMEOUT = 0.5
"""Seconds to wait for a default port to accept a connection: a local server answers at once."""

_probed: dict[str, bool] = {}
_skipped: collections.Counter[str] = collections.Counter()


def _listening(url: str) -> bool:
    """Whether something accepts TCP connections at the host and port of ``url``."""
    parts = urllib.parse.urlsplit(url)
    default_port = {"redis": 6379, "postgresql": 5432, "mysql": 3306}[parts.scheme.split("+")[0]]
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), timeout=PROBE_TIMEOUT
        ):
            return True
    except OSError:
        return False


def service_url(variable: str) -> str:
    """The URL of a real service for a test: the variable's, else the default local one if a
    server listens there (probed once per run), else skip (fail under CI)."""
    url = os.environ.get(variable)
    if url:
        return url
    service, default = SERVICES[variable]
    if variable not in _probed:
        _probed[variable] = _listening(default)
    if _probed[variable]:
        return default
    reason = f"{variable} is not set and no {service} listens at {default}"
    if IN_CI:
        pytest.fail(f"{reason}; CI must run every real-service test")
    pytest.skip(reason)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Count the skips `service_url` caused from the reports, which pytest-xdist's workers
    send to the process that prints the summary."""
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        for variable in SERVICES:
            if f"{variable} is not set and no " in reason:
                _skipped[variable] += 1


def skipped_services_line() -> str | None:
    """The one line that ends a run that skipped real-service tests: what, and how to enable."""
    if not _skipped:
        return None
    parts = [
        f"{count} need {SERVICES[variable][0]} ({variable}={SERVICES[variable][1]})"
        for variable, count in sorted(_skipped.items())
    ]
    return (
        f"skipped {sum(_skipped.values())} real-service tests: {'; '.join(parts)}. "
        "Start the server or export the variable (any host, port, user and database) to run them."
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Iterator[None]:
    """End the report with one line naming the services that were missing, if any were: after
    the per-test skip reasons, right above the final counts."""
    yield
    line = skipped_services_line()
    if line is not None:
        terminalreporter.write_line(line, yellow=True, bold=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``--dist loadgroup``), the tests that start servers and processes
    (marked ``integration`` or ``slow``) run one after another on one worker, while the rest
    share the others: two of them at once overloaded the 2-core machine they are sized for."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    heavy = pytest.mark.xdist_group("processes")
    for item in items:
        if item.get_closest_marker("integration") or item.get_closest_marker("slow"):
            item.add_marker(heavy)


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio; trio-specific tests opt in themselves."""
    return "asyncio"
