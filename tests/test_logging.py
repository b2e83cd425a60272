"""Store-failure warnings are throttled so an outage cannot flood the logs."""

from __future__ import annotations

import logging

import pytest

from bastion._logging import ThrottledLogger
from tests.conftest import FakeClock


def fail(log: ThrottledLogger, message: str) -> None:
    try:
        raise ConnectionError("store down")
    except ConnectionError:
        log.warning(message)


def test_repeats_are_held_back_and_counted(
    caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    """One warning per interval, with its traceback, then a count of the ones held back."""
    log = ThrottledLogger(logging.getLogger("bastion.test"), interval=10, clock=clock)
    with caplog.at_level(logging.WARNING, logger="bastion.test"):
        for _ in range(1000):
            fail(log, "store failed")
        clock.advance(10)
        fail(log, "store failed")
        fail(log, "another failure")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "store failed",
        "store failed (999 more since the last report)",
        "another failure",
    ]
    assert all(record.exc_info for record in caplog.records)
