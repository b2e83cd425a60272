"""The redis-py side of `RedisStore`: building a fail-fast client and running its scripts.

Imported only by `bastion.stores._redis`, which turns a missing redis-py into the error that
names the extra to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import weakref
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bastion.exceptions import StoreError, StoreUnavailable

__all__ = [
    "Client",
    "ClientOptions",
    "SingleServer",
    "connect",
    "decodes_responses",
    "failure",
    "is_cluster",
    "ping",
    "run_script",
    "single_server",
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


def connection_lost(error: StoreError) -> bool:
    """Whether ``error`` came of a connection that broke under the call (which may or may not
    have run), not of a timeout or an answer."""
    return isinstance(error.__cause__, _LOST)


def failure(exc: BaseException, operation: str) -> StoreError:
    """The bastion error for a redis-py failure during ``operation``."""
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
            raise failure(exc, name) from exc
        except Exception as exc:
            raise failure(exc, name) from exc


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
            raise failure(exc, "ping") from exc
        except Exception as exc:
            raise failure(exc, "ping") from exc


_IDLE_CHECK = "can_read" if hasattr(AbstractConnection, "can_read") else "can_read_destructive"
"""redis-py 8 renamed the check its pool makes on every checkout (the old name warns)."""
_IDLE: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()
"""The connections held idle for each connection pool, most recently used last."""


class SingleServer:
    """Scripts sent straight on the connections of one Redis server's pool (not a cluster).

    ``client.evalsha`` takes a connection from the pool and gives it back around every
    command (a lock, a condition, observability hooks), runs the client's ``Retry`` and
    response callbacks and, with a ``socket_timeout``, wraps every send in
    ``asyncio.wait_for`` (a Task on Python 3.11) and every read in a timer: on loopback that
    is about as much client-side work as the rest of the call. Here a connection taken from
    the pool stays with the store between calls, and a call is one ``EVALSHA`` sent and its
    reply read on it (``EVAL`` after ``NOSCRIPT``, as `run_script`).

    What the client's own path guaranteed still holds:

    - A connection on which a call failed or was cancelled may still have a reply on its way:
      it is closed and handed back to the pool (which reconnects it when next taken), never
      reused. Only an error reply, read in full, leaves it in use.
    - Before each use an idle connection is checked as the pool checks one on checkout
      (connected, nothing unread, not closed by the server: a restart, an idle ``timeout``,
      ``CLIENT KILL``; redis-py 8 skips that check when maintenance notifications are on, its
      default); a stale one is replaced before anything is sent, so no call fails for it and
      none is sent twice. A socket found dead only by the send fails the call with a lost
      connection, which the store sends again only for operations safe to repeat.
    - The store's `Gate` bounds every call, so the connections' own ``socket_timeout`` is
      lifted while the store holds them (and put back when they return to the pool). A
      ``socket_timeout`` shorter than the call's bound still bounds each round trip.
    - The idle connections of one pool are shared by every store on it, and never include the
      pool's last one, so two stores on one client, or commands sent through the client
      itself, do not starve. No more are held than calls ran at once (each store's gate
      bounds its own).

    The client's ``Retry`` does not apply to these calls: the store's own ``retries`` decide
    what is sent again, so a rate-limit hit is never sent twice whatever the client's policy.
    """

    __slots__ = (
        "_check_health",
        "_checkout_args",
        "_closed",
        "_idle",
        "_keep",
        "_pool",
        "_reply_timeout",
        "_socket_timeout",
    )

    def __init__(self, client: Any, *, call_timeout: float) -> None:
        pool = client.connection_pool
        self._pool = pool
        self._idle = _IDLE.setdefault(pool, [])
        self._keep = getattr(pool, "max_connections", 2**31) - 1
        self._socket_timeout: float | None = pool.connection_kwargs.get("socket_timeout")
        shorter = self._socket_timeout is not None and self._socket_timeout < call_timeout
        self._reply_timeout = self._socket_timeout if shorter else None
        # redis-py's PING before a command on a connection idle that long, only if asked for
        self._check_health = bool(pool.connection_kwargs.get("health_check_interval"))
        # redis-py 5.0 requires the (unused) command name; redis-py 8 warns if given one
        name = inspect.signature(pool.get_connection).parameters.get("command_name")
        required = name is not None and name.default is inspect.Parameter.empty
        self._checkout_args = ("EVALSHA",) if required else ()
        self._closed = False

    async def run_script(
        self, name: str, keys: Sequence[str], args: Sequence[Any], retries: int
    ) -> Any:
        """`run_script` on a held connection: the same replies, errors and retries."""
        script = _script(name)
        attempt = 0
        while True:
            conn = None
            try:
                conn = await self._take()
                command = conn.pack_command("EVALSHA", script.sha, len(keys), *keys, *args)
                try:
                    if self._reply_timeout is None:  # inline: this is every call's path
                        await conn.send_packed_command(command, check_health=self._check_health)
                        reply = await conn.read_response()
                    else:
                        reply = await self._round_trip(conn, command)
                except NoScriptError:
                    command = conn.pack_command("EVAL", script.source, len(keys), *keys, *args)
                    reply = await self._round_trip(conn, command)
            except ResponseError as exc:
                # the error reply was read in full: nothing is left pending on the connection
                if conn is not None and not self._kept(conn):
                    await self._give_back(conn)
                raise failure(exc, name) from exc
            except BaseException as exc:
                if await self._retry(conn, exc, attempt < retries, name):
                    attempt += 1
                    continue
                raise
            if not self._kept(conn):
                await self._give_back(conn)
            return reply

    async def ping(self, retries: int) -> None:
        attempt = 0
        while True:
            conn = None
            try:
                conn = await self._take()
                await self._round_trip(conn, conn.pack_command("PING"))
            except BaseException as exc:
                if await self._retry(conn, exc, attempt < retries, "ping"):
                    attempt += 1
                    continue
                raise
            if not self._kept(conn):
                await self._give_back(conn)
            return

    async def aclose(self) -> None:
        """Hand the pool back every connection held idle for it (other stores on the pool take
        theirs from it again); this store's later calls return theirs at once."""
        self._closed = True
        while self._idle:
            await self._give_back(self._idle.pop())

    async def _retry(self, conn: Any, exc: BaseException, may: bool, operation: str) -> bool:
        """After a call failed on ``conn`` (None: before one was taken), close it; True to send
        again (``may``: retries are left, and the connection broke), else raise the store's
        error for an ``Exception``, or False for the caller to re-raise anything else."""
        if conn is not None:
            await self._drop(conn)
        if may and isinstance(exc, _LOST):
            return True
        if isinstance(exc, Exception):
            raise failure(exc, operation) from exc
        return False

    async def _round_trip(self, conn: Any, command: list[bytes]) -> Any:
        if self._reply_timeout is None:
            await conn.send_packed_command(command, check_health=self._check_health)
            return await conn.read_response()
        try:
            async with asyncio.timeout(self._reply_timeout):
                await conn.send_packed_command(command, check_health=self._check_health)
                return await conn.read_response()
        except TimeoutError:
            raise RedisTimeoutError(
                f"no reply within socket_timeout ({self._reply_timeout} s)"
            ) from None

    async def _take(self) -> Any:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if await _ready(conn):
                return conn
            await self._drop(conn)
        conn = await self._pool.get_connection(*self._checkout_args)
        conn.socket_timeout = None
        return conn

    def _kept(self, conn: Any) -> bool:
        """Whether ``conn`` stays with the store (else it goes back to the pool)."""
        if self._closed or len(self._idle) >= self._keep:
            return False
        self._idle.append(conn)
        return True

    async def _drop(self, conn: Any) -> None:
        """Close a connection that may have a reply on its way and hand it to the pool."""
        with contextlib.suppress(Exception):
            await conn.disconnect(nowait=True)
        await self._give_back(conn)

    async def _give_back(self, conn: Any) -> None:
        conn.socket_timeout = self._socket_timeout
        await self._pool.release(conn)


async def _ready(conn: Any) -> bool:
    """Whether an idle connection can take a command: connected, with nothing to read (no
    stray reply, no end of stream from a server that closed it)."""
    try:
        return bool(conn.is_connected) and not await getattr(conn, _IDLE_CHECK)()
    except Exception:
        return False


def single_server(client: Any, *, call_timeout: float) -> SingleServer | None:
    """The direct path for a plain ``Redis`` client; None for a cluster or a client that
    keeps one dedicated connection (``single_connection_client``), which keep redis-py's."""
    if not isinstance(client, Redis) or getattr(client, "single_connection_client", False):
        return None
    return SingleServer(client, call_timeout=call_timeout)


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
