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
from redis.exceptions import NoScriptError, RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError

from bastion.exceptions import StoreError, StoreUnavailable

__all__ = [
    "Client",
    "ClientOptions",
    "connect",
    "decodes_responses",
    "is_cluster",
    "ping",
    "run_script",
    "split_url",
]

URL_OPTIONS = (
    "prefix",
    "call_timeout",
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

_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
_LOST = (RedisConnectionError, ConnectionError)
"""Failures after which an operation that is safe to repeat is tried again: the connection
broke, so the command may or may not have run; a timeout is not among them (the server is
slow, and asking again would only wait again)."""


class Client(Protocol):
    """The few redis-py calls the store makes; `Redis` and `RedisCluster` both offer them."""

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Awaitable[Any]: ...
    def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> Awaitable[Any]: ...
    def ping(self) -> Awaitable[Any]: ...
    def initialize(self) -> Awaitable[Any]: ...
    def aclose(self) -> Awaitable[None]: ...


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """What a store-built client is allowed to spend before it reports a failure."""

    socket_timeout: float
    connect_timeout: float
    pool_timeout: float
    max_connections: int | None


@dataclass(frozen=True, slots=True)
class _Script:
    name: str
    source: str
    sha: str


_COMPOSED = {"claim_hit": ("claim", "hit")}
"""Scripts that run others as functions of their own KEYS and ARGV (``run_<name>``), so one
round trip makes the same decisions as the scripts sent one after the other."""


@cache
def _script(name: str) -> _Script:
    lua = resources.files("bastion.stores").joinpath("lua")
    parts = [lua.joinpath("_clock.lua").read_text("utf-8")]
    for inner in _COMPOSED.get(name, ()):
        body = lua.joinpath(f"{inner}.lua").read_text("utf-8")
        parts.append(f"local function run_{inner}(KEYS, ARGV)\n{body}end\n")
    parts.append(lua.joinpath(f"{name}.lua").read_text("utf-8"))
    source = "".join(parts)
    return _Script(name, source, hashlib.sha1(source.encode()).hexdigest())


def _error(exc: BaseException, operation: str) -> StoreError:
    if isinstance(exc, _UNREACHABLE):
        return StoreUnavailable(f"redis unreachable during {operation}: {exc}")
    if isinstance(exc, RedisClusterException) and "same key slot" in str(exc):
        return StoreError(
            f"redis cluster refused {operation}: its keys span several hash slots (the tiers of "
            "one request are keyed by different principals); give the store a fixed hash_tag"
        )
    return StoreError(f"redis failed during {operation}: {exc}")


async def _evalsha(
    client: Client, script: _Script, keys: Sequence[str], args: Sequence[Any]
) -> Any:
    try:
        return await client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        # the server's script cache is empty (restart, failover, SCRIPT FLUSH): EVAL runs
        # the script and caches it again, so only this one call pays a second round trip
        return await client.eval(script.source, len(keys), *keys, *args)


async def run_script(
    client: Client, name: str, keys: Sequence[str], args: Sequence[Any], *, retries: int = 0
) -> Any:
    """Run ``lua/<name>.lua`` in one round trip, or two right after the server lost it.

    ``retries`` is how often to send it again when the connection broke under it; only
    callers whose script is safe to repeat pass more than 0. Any failure, the client
    library's own bugs included, leaves as a `StoreError`.
    """
    script = _script(name)
    attempt = 0
    while True:
        try:
            return await _evalsha(client, script, keys, args)
        except _LOST as exc:
            if attempt < retries:
                attempt += 1
                continue
            raise _error(exc, name) from exc
        except Exception as exc:
            raise _error(exc, name) from exc


async def ping(client: Client, *, retries: int = 0) -> None:
    attempt = 0
    while True:
        try:
            await client.ping()
            return
        except _LOST as exc:
            if attempt < retries:
                attempt += 1
                continue
            raise _error(exc, "ping") from exc
        except Exception as exc:
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

    redis-py never retries on its own (``Retry`` with 0 retries): the store retries what is
    safe to repeat itself, and a rate-limit hit is never sent twice.

    A single server gets a blocking pool: a burst beyond ``max_connections`` waits up to the
    pool timeout for a free connection instead of failing (redis-py's default pool raises at
    once) or opening a connection per request (a connection storm whose connects time out
    under load). A cluster gets ``max_connections`` per node (redis-py's cluster pools raise
    rather than wait; the store queues its calls in front of them instead, see
    `RedisStore`), requires every slot to be covered, and follows a ``MOVED`` by updating
    that slot alone: redis-py's default rebuilds the whole client every fifth ``MOVED``,
    closing the connections of every call in flight ("Connection closed by server").
    """
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    common: dict[str, Any] = {
        "socket_timeout": options.socket_timeout,
        "socket_connect_timeout": options.connect_timeout,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": False,
    }
    max_connections = options.max_connections or default_max_connections
    scheme, _, rest = url.partition("://")
    if scheme.endswith("+cluster"):
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(
            f"{scheme.removesuffix('+cluster')}://{rest}",
            max_connections=max_connections,
            require_full_coverage=True,
            reinitialize_steps=0,
            **common,
        )
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=options.pool_timeout,
        **common,
    )
    return Redis.from_pool(pool)


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is redis-py's asyncio `RedisCluster`."""
    from redis.asyncio.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def decodes_responses(client: Any) -> bool:
    """Whether a client turns replies into str, which would corrupt stored binary responses."""
    get_encoder = getattr(client, "get_encoder", None)
    return get_encoder is not None and bool(get_encoder().decode_responses)
