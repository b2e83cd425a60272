"""Store-failure warnings that cannot flood the logs during an outage."""

from __future__ import annotations

import logging
import time
from collections import Counter

from bastion.typing import Clock

__all__ = ["ThrottledLogger"]

DEFAULT_INTERVAL = 10.0


class ThrottledLogger:
    """Logs each message, with its traceback, at most once per ``interval`` seconds.

    While a store is down every request fails the same way; one warning every few seconds,
    saying how many were held back, tells an operator as much as thousands would.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = DEFAULT_INTERVAL,
        clock: Clock = time.monotonic,
    ) -> None:
        self.logger = logger
        self._interval = interval
        self._clock = clock
        self._next: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def warning(self, message: str) -> None:
        """Log ``message`` with the exception being handled, unless it was logged recently."""
        now = self._clock()
        if now < self._next.get(message, float("-inf")):
            self._held[message] += 1
            return
        self._next[message] = now + self._interval
        held = self._held.pop(message, 0)
        suffix = f" ({held} more since the last report)" if held else ""
        self.logger.warning("%s%s", message, suffix, exc_info=True)
