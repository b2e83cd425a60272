"""`LimitOverrides`: a tier's limit per key from your own lookup, cached."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable

import anyio

from bastion._logging import ThrottledLogger
from bastion.exceptions import ConfigurationError
from bastion.typing import Clock

__all__ = ["LimitOverrides", "LimitProvider"]

LimitProvider = Callable[[str], Awaitable[int | None]]
"""Given a tier's bucket key (``hdr:x-api-key=…``), the limit for it, or None for the
tier's own."""

DEFAULT_TTL = 60.0
DEFAULT_FAILURE_TTL = 5.0
DEFAULT_TIMEOUT = 1.0
DEFAULT_MAX_KEYS = 10_000

logger = logging.getLogger("bastion.ratelimit")
provider_failures = ThrottledLogger(logger)


class LimitOverrides:
    """Per-key limits from ``provider`` (a plan or tenant lookup), so a premium key gets more
    without a redeploy.

    Each key's answer is kept for ``ttl`` seconds (on ``clock``, injectable), and concurrent
    requests for a key not in the cache wait for one lookup. When the provider fails, takes
    longer than ``timeout`` seconds or answers something other than an integer >= 1, the
    request gets the tier's static limit, a throttled warning is logged, and that answer is
    kept for ``failure_ttl`` seconds so a provider that is down is not asked on every request.
    A failing provider never fails a request. At most ``max_keys`` answers are kept; the cache
    is emptied when it fills.

    The provider is given the bucket key, not the request, so that its answer can be cached
    per key: key the tier on the value the lookup needs (an unhashed
    ``keys.header("x-tenant", hashed=False)``, or a `keys.custom` extractor).
    """

    __slots__ = (
        "_cache",
        "_clock",
        "_failure_ttl",
        "_max_keys",
        "_pending",
        "_provider",
        "_timeout",
        "_ttl",
    )

    def __init__(
        self,
        provider: LimitProvider,
        *,
        ttl: float = DEFAULT_TTL,
        failure_ttl: float = DEFAULT_FAILURE_TTL,
        timeout: float = DEFAULT_TIMEOUT,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Clock = time.monotonic,
    ) -> None:
        if not callable(provider):
            raise ConfigurationError("the limit provider must be an async callable")
        for name, value in (("ttl", ttl), ("failure_ttl", failure_ttl), ("timeout", timeout)):
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigurationError(f"{name} must be a number of seconds >= 0")
        if max_keys < 1:
            raise ConfigurationError("max_keys must be at least 1")
        self._provider = provider
        self._ttl = float(ttl)
        self._failure_ttl = float(failure_ttl)
        self._timeout = float(timeout)
        self._max_keys = max_keys
        self._clock = clock
        self._cache: dict[str, tuple[int | None, float]] = {}
        self._pending: dict[str, anyio.Event] = {}

    def __repr__(self) -> str:
        return f"LimitOverrides({self._provider!r}, ttl={self._ttl})"

    async def limit(self, key: str, default: int) -> int:
        """The limit for ``key``: the provider's answer while cached, else ``default``."""
        cached = self._cache.get(key)
        if cached is not None and cached[1] > self._clock():
            return default if cached[0] is None else cached[0]
        pending = self._pending.get(key)
        if pending is not None:
            await pending.wait()
            cached = self._cache.get(key)
            return default if cached is None or cached[0] is None else cached[0]
        event = self._pending[key] = anyio.Event()
        try:
            found = await self._ask(key)
        finally:
            del self._pending[key]
            event.set()
        return default if found is None else found

    async def _ask(self, key: str) -> int | None:
        found: object = None
        ok = False
        try:
            with anyio.fail_after(self._timeout):
                found = await self._provider(key)
            ok = found is None or (
                isinstance(found, int) and not isinstance(found, bool) and found >= 1
            )
            if not ok:
                provider_failures.warning(
                    f"limit provider answered {type(found).__name__}, not an int >= 1 or None; "
                    "using the static limit"
                )
        except Exception as exc:
            provider_failures.warning(
                f"limit provider failed ({type(exc).__name__}); using the static limit"
            )
        if len(self._cache) >= self._max_keys:
            self._cache.clear()
        limit = found if ok and isinstance(found, int) else None
        self._cache[key] = (limit, self._clock() + (self._ttl if ok else self._failure_ttl))
        return limit
