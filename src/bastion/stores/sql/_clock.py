"""The SQL store's time: the database's clock, seen from this host through a measured offset.

Rate-limit windows are decided on the database's clock in the deciding statement itself;
lease, slot and expiry deadlines are written by this process, on its own clock shifted by
the database's offset from it, measured every `CLOCK_SYNC_INTERVAL` seconds.
"""

from __future__ import annotations

import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from bastion.stores.sql._functions import CLOCK_MS
from bastion.typing import Clock

__all__ = ["CLOCK_SYNC_INTERVAL", "StoreClock"]

CLOCK_SYNC_INTERVAL = 30.0
"""Seconds between two measures of the database clock's offset (hosts' clocks drift by
milliseconds a minute at worst, and each measure costs one statement)."""


class StoreClock:
    """Milliseconds on the database's clock, or on ``clock`` (seconds) when one is given, as
    tests with a `FakeClock` do: then nothing is measured and decisions use it too."""

    __slots__ = ("_clock", "_due", "_offset_ms", "_read", "on_database")

    def __init__(self, dialect: str, clock: Clock | None) -> None:
        self._clock = time.time if clock is None else clock
        self.on_database = clock is None
        self._read = text(f"SELECT {CLOCK_MS[dialect]}")
        self._offset_ms = 0
        """The database's clock minus this host's, in ms (0 on a clock of the caller's)."""
        self._due = 0.0
        """When (`time.monotonic`) the offset is measured again."""

    def now(self) -> int:
        return int(self._clock() * 1000) + self._offset_ms

    def decision_now(self) -> int | None:
        """The time a rate-limit decision is made at: None for the database's clock."""
        return None if self.on_database else self.now()

    def due(self) -> bool:
        """Whether the offset is to be measured before the next statement."""
        return self.on_database and time.monotonic() >= self._due

    async def measure(self, conn: AsyncConnection) -> None:
        """Measure the offset on ``conn``, as of the middle of the round trip that read it
        (so within half a round trip)."""
        before = self._clock()
        database_ms = int((await conn.execute(self._read)).scalar_one())
        after = self._clock()
        self._offset_ms = database_ms - round((before + after) * 500)
        self._due = time.monotonic() + CLOCK_SYNC_INTERVAL
