"""Real-service URLs: the default local servers are found without any variable set."""

from __future__ import annotations

import collections
import socket

import pytest

import tests.conftest as conftest
from tests.stores.redis_support import free_port

VARIABLE = "BASTION_TEST_REDIS_URL"


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """A run's worth of probe results and skip counts of its own; the variable unset."""
    skipped: collections.Counter[str] = collections.Counter()
    monkeypatch.setattr(conftest, "_probed", {})
    monkeypatch.setattr(conftest, "_skipped", skipped)
    monkeypatch.setattr(conftest, "IN_CI", False)
    monkeypatch.delenv(VARIABLE, raising=False)
    return skipped


def _default(monkeypatch: pytest.MonkeyPatch, port: int) -> str:
    url = f"redis://127.0.0.1:{port}/15"
    monkeypatch.setitem(conftest.SERVICES, VARIABLE, ("Redis", url))
    return url


def test_a_listening_default_is_used_without_the_variable(
    fresh: collections.Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the variable unset, the default URL is used when something listens there."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = _default(monkeypatch, server.getsockname()[1])
        assert conftest.service_url(VARIABLE) == url
    assert conftest.skipped_services_line() is None


def test_a_silent_default_skips_and_the_run_says_how_to_enable_it(
    fresh: collections.Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listening: the test skips, once probed, and the closing line names the variable
    and its URL format."""
    url = _default(monkeypatch, free_port())
    for _ in range(2):
        with pytest.raises(pytest.skip.Exception, match=VARIABLE) as skip:
            conftest.service_url(VARIABLE)
        # the skip's report, as it reaches the summary (from a pytest-xdist worker too)
        conftest.pytest_runtest_logreport(
            pytest.TestReport(
                nodeid="t",
                location=("t", 0, "t"),
                keywords={},
                outcome="skipped",
                longrepr=("t", 1, f"Skipped: {skip.value.msg}"),
                when="setup",
            )
        )
    assert conftest._probed == {VARIABLE: False}
    assert fresh == {VARIABLE: 2}
    line = conftest.skipped_services_line()
    assert line is not None
    assert "\n" not in line
    assert f"{VARIABLE}={url}" in line
    assert line.startswith("skipped 2 real-service tests")


def test_under_ci_a_missing_service_fails(
    fresh: collections.Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under CI=true an unreachable service fails the test instead of skipping it."""
    monkeypatch.setattr(conftest, "IN_CI", True)
    _default(monkeypatch, free_port())
    with pytest.raises(pytest.fail.Exception, match="CI must run every real-service test"):
        conftest.service_url(VARIABLE)


def test_a_set_variable_wins_without_probing(
    fresh: collections.Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exported URL is used as it is, and no default is probed."""
    monkeypatch.setenv(VARIABLE, "redis://elsewhere:1/0")
    assert conftest.service_url(VARIABLE) == "redis://elsewhere:1/0"
    assert conftest._probed == {}
