"""The kit as a pytest plugin: a user's test points its fixtures at an app and calls
``bastion_check``; it passes for a sound app and fails naming the broken checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

USER_TEST = """
import httpx
import pytest

from bastion.check import Target
from tests.check.apps import {app}, advance

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def bastion_target():
    return Target(path="/orders", body='{{"item": "${{nonce}}"}}')


@pytest.fixture
async def bastion_client():
    transport = httpx.ASGITransport(app={app})
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        yield client


@pytest.fixture
def bastion_sleep():
    return lambda seconds: advance({app}.clock, seconds)


async def test_conformance(bastion_check):
    await bastion_check()
"""


def _run(tmp_path: Path, app: str) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_user.py"
    test.write_text(USER_TEST.format(app=app))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "bastion.check.pytest_plugin",
            "-p",
            "no:cacheprovider",
            "-q",
            "--rootdir",
            str(tmp_path),
            str(test),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.parametrize(
    ("app", "code", "failing"),
    [("app", 0, []), ("broken_app", 1, ["replay-no-set-cookie", "principals-apart"])],
)
def test_the_plugin_passes_and_fails_a_users_test(
    tmp_path: Path, app: str, code: int, failing: list[str]
) -> None:
    """Opted in with ``-p bastion.check.pytest_plugin``, ``bastion_check`` passes against
    the sound app and fails against the broken one, its message naming each failed check."""
    done = _run(tmp_path, app)
    assert done.returncode == code, done.stdout + done.stderr
    # the table may be printed twice (the failure's message and its captured output)
    lines = done.stdout.splitlines()
    failed = list(dict.fromkeys(line.split()[0] for line in lines if line.endswith("  FAIL")))
    assert failed == failing
