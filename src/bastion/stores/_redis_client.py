"""The redis-py side of `RedisStore`: building a fail-fast client and running its scripts.

Imported only by `bastion.stores._redis`, which turns a missing redis-py into the error that
names the extra to install.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bastion.exceptions import StoreError, StoreUnavailable

__all__ = ["Client", "ClientOptions", "connect", "decodes_responses", "run_script", "split_url"]

URL_OPTIONS = (
    "prefix",
    "hash_tag",
    "socket_timeout",
    "socket_connect_timeout",
    "timeout",
    "max_connections",
)
"""Query parameters of a store URL that the store reads itself rather than pass to redis-py:
its own options, and the timeouts and pool size it derives other settings from (redis-py
would apply ``?socket_timeout=`` to commands alone, leaving the connect and pool timeouts that
default to it behind)."""

_FAILURES = (RedisError, RedisClusterException, OSError)
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


class Client(Protocol):
    """The few redis-py calls the store makes; `Redis` and `RedisCluster` both offer them."""

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Awaitable[Any]: ...
    def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> Awaitable[Any]: ...
    def ping(self) -> Awaitable[Any]: ...
    def aclose(self) -> Awaitable[None]: ...


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """What a store-built client is allowed to spend before it reports a failure."""

    socket_timeout: float
    connect_timeout: float
    pool_timeout: float
    retries: int
    max_connections: int | None


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


async def run_script(client: Client, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """Run ``lua/<name>.lua`` in one round trip, or two right after the server lost it."""
    script = _script(name)
    try:
        try:
            return await client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # the server's script cache is empty (restart, failover, SCRIPT FLUSH): EVAL runs
            # the script and caches it again, so only this one call pays a second round trip
            return await client.eval(script.source, len(keys), *keys, *args)
    except _FAILURES as exc:
        raise _error(exc, name) from exc


async def ping(client: Client) -> None:
    try:
        await client.ping()
    except _FAILURES as exc:
        raise _error(exc, "ping") from exc


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """Take the options the store reads itself (`URL_OPTIONS`) out of a redis URL."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in URL_OPTIONS}
    rest = urlencode([(k, v) for k, v in query if k not in URL_OPTIONS])
    return urlunsplit(parts._replace(query=rest)), ours


def connect(url: str, options: ClientOptions, default_max_connections: int) -> Any:
    """A client whose every failure surfaces within the timeouts instead of being retried.

    A single server gets a blocking pool: a burst beyond ``max_connections`` waits up to the
    pool timeout for a free connection instead of failing (redis-py's default pool raises at
    once) or opening a connection per request (a connection storm whose connects time out
    under load). redis-py's cluster pools cannot wait, so a cluster keeps redis-py's larger
    per-node default unless ``max_connections`` is given.
    """
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    common: dict[str, Any] = {
        "socket_timeout": options.socket_timeout,
        "socket_connect_timeout": options.connect_timeout,
        "retry": Retry(NoBackoff(), options.retries),
        "decode_responses": False,
    }
    scheme, _, rest = url.partition("://")
    if scheme.endswith("+cluster"):
        from redis.asyncio.cluster import RedisCluster

        if options.max_connections is not None:
            common["max_connections"] = options.max_connections
        return RedisCluster.from_url(f"{scheme.removesuffix('+cluster')}://{rest}", **common)
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=options.max_connections or default_max_connections,
        timeout=options.pool_timeout,
        **common,
    )
    return Redis.from_pool(pool)


def decodes_responses(client: Any) -> bool:
    """Whether a client turns replies into str, which would corrupt stored binary responses."""
    get_encoder = getattr(client, "get_encoder", None)
    return get_encoder is not None and bool(get_encoder().decode_responses)
