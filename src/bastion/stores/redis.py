"""`RedisStore`: idempotency records and rate-limit buckets shared by every process, over Redis.

Each primitive is one Lua script (``stores/lua/<operation>.lua``) run with EVALSHA, so each
costs exactly one round trip and is atomic on the server. A server that lost its script cache
(restart, failover, ``SCRIPT FLUSH``) answers NOSCRIPT; the store then sends the script itself
with EVAL, which also caches it again, so no request ever fails for it.

Times are computed from the injectable clock and passed to the scripts, never read from the
server, so every process must share a reasonably synchronised wall clock (NTP). Keys still get a
TTL in the same command that writes them, only so Redis frees what nobody asks for again.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from bastion.exceptions import ConfigurationError, StoreError, StoreUnavailable, missing_extra
from bastion.stores.protocols import Claim, RateLimitDecision, RateLimitHit
from bastion.typing import Clock

try:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import (
        NoScriptError,
        RedisClusterException,
        RedisError,
    )
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_extra("redis", "redis") from exc

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

__all__ = [
    "DEFAULT_EXPIRY_SLACK_MS",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_PREFIX",
    "DEFAULT_SOCKET_TIMEOUT",
    "MAX_TIER_SPAN",
    "RedisStore",
]

DEFAULT_PREFIX = "bastion"
DEFAULT_SOCKET_TIMEOUT = 0.25
DEFAULT_EXPIRY_SLACK_MS = 1_000
DEFAULT_MAX_CONNECTIONS = 16
MAX_TIER_SPAN = 2**50
"""The largest ``(limit + cost) * window_ms`` a tier may have on Redis.

Lua numbers are doubles, exact for integers below 2^53; below this bound every intermediate
value of the rate-limit scripts stays under 2^52. It allows, for instance, ten million
requests per day or a million per eleven days.
"""

_ALGORITHM_CODES = {"fixed_window": "f", "sliding_window": "s", "gcra": "g"}
_URL_OPTIONS = ("prefix", "hash_tag")
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


class _Client(Protocol):
    """The few redis-py calls the store makes; `Redis` and `RedisCluster` both offer them."""

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Awaitable[Any]: ...
    def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> Awaitable[Any]: ...
    def ping(self) -> Awaitable[Any]: ...
    def aclose(self) -> Awaitable[None]: ...


@dataclass(frozen=True, slots=True)
class _Script:
    name: str
    source: str
    sha: str


@cache
def _script(name: str) -> _Script:
    source = resources.files("bastion.stores").joinpath(f"lua/{name}.lua").read_text("utf-8")
    return _Script(name, source, hashlib.sha1(source.encode()).hexdigest())


def _error(exc: BaseException, operation: str) -> StoreError:
    if isinstance(exc, _UNREACHABLE):
        return StoreUnavailable(f"redis unreachable during {operation}: {exc}")
    return StoreError(f"redis failed during {operation}: {exc}")


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    """Take bastion's own options (``?prefix=…&hash_tag=…``) out of a redis URL."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in _URL_OPTIONS}
    rest = urlencode([(k, v) for k, v in query if k not in _URL_OPTIONS])
    return urlunsplit(parts._replace(query=rest)), ours


@dataclass(frozen=True, slots=True)
class _Timeouts:
    socket: float
    connect: float
    pool: float
    retries: int
    max_connections: int


def _connect(url: str, limits: _Timeouts) -> Any:
    """A client whose every failure surfaces within the timeouts instead of being retried.

    Connections come from a blocking pool: a burst beyond ``max_connections`` waits up to the
    pool timeout for a free connection instead of failing (redis-py's default pool raises at
    once, which would turn a traffic spike into store errors).
    """
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    options: dict[str, Any] = {
        "socket_timeout": limits.socket,
        "socket_connect_timeout": limits.connect,
        "retry": Retry(NoBackoff(), limits.retries),
        "decode_responses": False,
    }
    scheme, _, rest = url.partition("://")
    if scheme.endswith("+cluster"):
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(
            f"{scheme.removesuffix('+cluster')}://{rest}",
            max_connections=limits.max_connections,
            **options,
        )
    pool = BlockingConnectionPool.from_url(
        url, max_connections=limits.max_connections, timeout=limits.pool, **options
    )
    return Redis.from_pool(pool)


def _check_name(what: str, value: str) -> None:
    if not value or "{" in value or "}" in value:
        raise ConfigurationError(f"{what} must be non-empty and contain no braces: {value!r}")


class RedisStore:
    """Idempotency records and rate-limit buckets in Redis, shared by every worker process.

    Pass a redis-py asyncio ``client`` (``Redis`` or ``RedisCluster``, which the store never
    closes) or a ``url`` (the store builds and owns its client). Clients the store builds fail
    fast: ``socket_timeout`` bounds each operation and ``retries`` defaults to none, so while
    Redis is down each call raises `StoreUnavailable` within the timeout and the middleware's
    fail-open or fail-closed policy answers at once. Broken connections are replaced on the next
    call, so service resumes by itself when Redis is back.

    Expiry is decided on the clock, and each key's Redis TTL outlives it by ``expiry_slack_ms``
    so that processes whose clocks differ by less than that agree on what is still alive.

    Keys start with ``prefix``. Every rate-limit key carries the hash tag ``{hash_tag}``
    (default: the prefix) so that one request's tiers, decided in one script, always share a
    Redis Cluster slot.
    """

    backend = "redis"

    def __init__(
        self,
        client: Redis | RedisCluster | None = None,
        *,
        url: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        hash_tag: str | None = None,
        clock: Clock = time.time,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        socket_connect_timeout: float | None = None,
        retries: int = 0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        pool_timeout: float | None = None,
        expiry_slack_ms: int = DEFAULT_EXPIRY_SLACK_MS,
    ) -> None:
        if (client is None) == (url is None):
            raise ConfigurationError("RedisStore needs exactly one of `client` or `url`")
        if url is not None:
            url, url_options = _split_url(url)
            prefix = url_options.get("prefix", prefix)
            hash_tag = url_options.get("hash_tag", hash_tag)
        hash_tag = prefix if hash_tag is None else hash_tag
        _check_name("prefix", prefix)
        _check_name("hash_tag", hash_tag)
        if expiry_slack_ms < 0 or socket_timeout <= 0 or retries < 0 or max_connections < 1:
            raise ConfigurationError(
                "expiry_slack_ms and retries must be >= 0, socket_timeout positive and "
                "max_connections at least 1"
            )
        if client is not None and _decodes_responses(client):
            raise ConfigurationError(
                "RedisStore needs a client with decode_responses=False: stored responses are bytes"
            )
        if url is not None:
            limits = _Timeouts(
                socket=socket_timeout,
                connect=socket_connect_timeout or socket_timeout,
                pool=socket_timeout if pool_timeout is None else pool_timeout,
                retries=retries,
                max_connections=max_connections,
            )
            client = _connect(url, limits)
        self._client = cast(_Client, client)
        self._owns_client = url is not None
        self._slack = expiry_slack_ms
        self._clock = clock
        self.prefix = prefix
        self.hash_tag = hash_tag
        self._record_prefix = f"{prefix}:idem:"
        self._bucket_prefix = f"{prefix}:rl:{{{hash_tag}}}:"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """A store on its own client for ``redis://``, ``rediss://``, ``unix://`` or
        ``redis+cluster://`` URLs. Query parameters configure redis-py (``socket_timeout``,
        ``max_connections``, …) and bastion (``prefix``, ``hash_tag``)."""
        return cls(url=url, **options)

    @property
    def client(self) -> Any:
        """The redis-py client underneath, for health checks and tooling."""
        return self._client

    def _now(self) -> int:
        return int(self._clock() * 1000)

    def record_key(self, key: str) -> str:
        """The Redis key of an idempotency record; one key per script, so no hash tag."""
        return self._record_prefix + key

    def bucket_key(self, key: str) -> str:
        """The Redis key of a rate-limit bucket, hash-tagged so all buckets share a slot."""
        return self._bucket_prefix + key

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        script = _script(name)
        client = self._client
        try:
            try:
                return await client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                # the server's script cache is empty (restart, failover, SCRIPT FLUSH): EVAL
                # runs the script and caches it again in this same single round trip
                return await client.eval(script.source, len(keys), *keys, *args)
        except (RedisError, RedisClusterException, OSError) as exc:
            raise _error(exc, name) from exc

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except (RedisError, RedisClusterException, OSError) as exc:
            raise _error(exc, "ping") from exc

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    # -- idempotency ------------------------------------------------------------------------

    async def claim(self, key: str, fingerprint: str, token: str, *, lease_ms: int) -> Claim:
        reply = await self._run(
            "claim",
            [self.record_key(key)],
            [fingerprint, token, lease_ms, self._now(), lease_ms + self._slack],
        )
        if reply[0] == 1:
            return Claim(True, fingerprint)
        holder = reply[1].decode()
        if len(reply) == 4:
            return Claim(False, holder, bytes(reply[3]), 0)
        return Claim(False, holder, None, int(reply[2]))

    async def renew(self, key: str, token: str, *, lease_ms: int) -> bool:
        reply = await self._run(
            "renew",
            [self.record_key(key)],
            [token, lease_ms, self._now(), lease_ms + self._slack],
        )
        return bool(reply == 1)

    async def complete(self, key: str, token: str, response: bytes, *, ttl_ms: int) -> bool:
        reply = await self._run(
            "complete",
            [self.record_key(key)],
            [token, ttl_ms, self._now(), ttl_ms + self._slack, response],
        )
        return bool(reply == 1)

    async def release(self, key: str, token: str) -> bool:
        reply = await self._run("release", [self.record_key(key)], [token, self._now()])
        return bool(reply == 1)

    # -- rate limits ------------------------------------------------------------------------

    @staticmethod
    def validate_hit(hit: RateLimitHit) -> None:
        """Raise `ConfigurationError` for a tier the Lua port cannot decide exactly.

        Call it when a policy is built to fail at start-up; `hit` checks again regardless.
        """
        if hit.algorithm not in _ALGORITHM_CODES:
            raise ConfigurationError(f"unknown rate-limit algorithm {hit.algorithm!r}")
        if hit.limit < 1 or hit.window_ms < 1 or hit.cost < 0:
            raise ConfigurationError(
                f"tier {hit.key!r}: limit and window_ms must be >= 1 and cost >= 0"
            )
        if (hit.limit + hit.cost) * hit.window_ms > MAX_TIER_SPAN:
            raise ConfigurationError(
                f"tier {hit.key!r}: (limit + cost) * window_ms must not exceed 2**50 on Redis "
                "(Lua numbers are exact only up to 2**53); use a shorter window or a lower limit"
            )

    async def hit(self, hits: Sequence[RateLimitHit]) -> list[RateLimitDecision]:
        if not hits:
            return []
        keys: list[str] = []
        args: list[Any] = [self._now(), self._slack]
        for one in hits:
            self.validate_hit(one)
            keys.append(self.bucket_key(one.key))
            args += (_ALGORITHM_CODES[one.algorithm], one.limit, one.window_ms, one.cost)
        reply = await self._run("hit", keys, args)
        return [
            RateLimitDecision(
                allowed=reply[i] == 1,
                limit=one.limit,
                remaining=int(reply[i + 1]),
                reset_ms=int(reply[i + 2]),
                retry_after_ms=int(reply[i + 3]),
            )
            for one, i in zip(hits, range(0, 4 * len(hits), 4), strict=True)
        ]


def _decodes_responses(client: Any) -> bool:
    try:
        return bool(client.get_encoder().decode_responses)
    except AttributeError:
        return False
