"""`RedisStore`: idempotency records and rate-limit buckets shared by every process, over Redis.

Each primitive is one Lua script (``stores/lua/<operation>.lua``) run with EVALSHA, so each
costs exactly one round trip and is atomic on the server. A server that lost its script cache
(restart, failover, ``SCRIPT FLUSH``) answers NOSCRIPT; the store then sends the script itself
with EVAL, which also caches it again, so no request ever fails for it.

Every decision is made on the Redis server's clock (``TIME`` inside the script), so processes
whose hosts' clocks disagree still decide a key on one clock: a window opens and a lease ends at
the same instant for all of them. A store given a ``clock`` (tests inject one) passes that
clock's time instead. Keys still get a TTL in the same command that writes them, only so Redis
frees what nobody asks for again.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from bastion.exceptions import ConfigurationError, StoreUnavailable, missing_extra
from bastion.stores._breaker import CircuitBreaker, Gate
from bastion.stores._protocols import (
    Claim,
    RateLimitDecision,
    RateLimitHit,
    SlotDecision,
    SlotRequest,
    claim_then_hit,
)
from bastion.typing import Clock

try:
    from bastion.stores import _redis_client as _rc
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without redis-py
    raise missing_extra("redis", "redis") from exc

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

__all__ = [
    "DEFAULT_EXPIRY_SLACK_MS",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_PREFIX",
    "DEFAULT_RETRIES",
    "DEFAULT_SOCKET_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "MAX_TIER_SPAN",
    "RedisStore",
]

DEFAULT_PREFIX = "bastion"
DEFAULT_TIMEOUT = 1.0
"""Seconds a store call may wait on Redis: for a pooled connection while Redis answers none
of the calls holding them, then for its reply (see `Gate`: time queued behind the process's
own calls does not count). 0.25 s failed calls of a healthy Redis on saturated cores
(benchmarks/bench_outage.py); an outage costs it only until the circuit breaker opens."""
DEFAULT_SOCKET_TIMEOUT = DEFAULT_TIMEOUT
DEFAULT_RETRIES = 1
DEFAULT_EXPIRY_SLACK_MS = 1_000
DEFAULT_MAX_CONNECTIONS = 16
MAX_TIER_SPAN = 2**50
"""The largest ``(limit + cost) * window_ms`` a tier may have on Redis.

Lua numbers are doubles, exact for integers below 2^53; below this bound every intermediate
value of the rate-limit scripts stays under 2^52. It allows, for instance, ten million
requests per day or a million per eleven days.
"""

_N = TypeVar("_N", int, float)
_ALGORITHM_CODES = {"fixed_window": "f", "sliding_window": "s", "gcra": "g"}


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


def _check_name(what: str, value: str) -> None:
    if not value or "{" in value or "}" in value:
        raise ConfigurationError(f"{what} must be non-empty and contain no braces: {value!r}")


def _url_number(options: dict[str, str], name: str, kind: type[_N]) -> _N | None:
    raw = options.get(name)
    if raw is None:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise ConfigurationError(f"redis URL option {name}={raw!r} is not a number") from None


class RedisStore:
    """Idempotency records and rate-limit buckets in Redis, shared by every worker process.

    Pass a redis-py asyncio ``client`` (``Redis`` or ``RedisCluster``, which the store never
    closes) or a ``url`` (the store builds and owns its client). Every call is bounded by
    ``timeout`` (1 s by default) of waiting on Redis: for a pooled connection while Redis
    answers none of the calls ahead, then for connecting and the round trip;
    ``socket_timeout``, ``socket_connect_timeout`` and ``pool_timeout`` default to it. At
    most ``max_connections`` (16 by default) connections are opened per process (per node
    on a cluster); a burst beyond that waits for a free one, first come first served. On a
    single server the store keeps the connections it used between calls (shared with other
    stores on the same client, never the last one of its pool) and sends its scripts on them
    itself, so a client's own ``Retry`` does not apply to them (see ``docs/stores.md``).

    Operations that are safe to repeat (claim, renew, complete, release, ping: each is fenced
    by the request's own token, so a repeat changes nothing) are sent again up to ``retries``
    times when the connection broke under them. A rate-limit hit never is: it may already have
    been counted, and a second send would count it twice.

    ``breaker`` (a `CircuitBreaker`, one per store by default) skips Redis after consecutive
    failures, so while Redis is down each call raises `StoreUnavailable` at once and the
    middleware's fail-open or fail-closed policy answers without waiting; one call probes
    Redis again after the breaker's cool-down. ``CircuitBreaker(failures=0)`` turns it off.

    Windows, leases and expiry are decided on the Redis server's clock by default, the same for
    every process. ``clock`` (seconds, like `time.time`) makes the store decide on the caller's
    clock instead, as tests with a `FakeClock` do; processes whose clocks then differ by less
    than ``expiry_slack_ms`` still agree on what is alive (each key's TTL outlives its deadline
    by that much), but a fixed window may then admit up to twice its limit in one window of
    real time when the clocks straddle its boundary (see ``docs/stores.md``).

    Keys start with ``prefix``. A rate-limit key carries a hash tag drawn from its principal
    (what the tier is keyed by: an address, an API key…), so the tiers of one client share a
    Redis Cluster slot and are decided in one script while different clients spread over the
    cluster. A fixed ``hash_tag`` puts every bucket in one slot instead: needed on a cluster
    when the tiers of one request are keyed by different principals.
    """

    backend = "redis"

    def __init__(
        self,
        client: Redis | RedisCluster | None = None,
        *,
        url: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        hash_tag: str | None = None,
        clock: Clock | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        socket_timeout: float | None = None,
        socket_connect_timeout: float | None = None,
        retries: int = DEFAULT_RETRIES,
        max_connections: int | None = None,
        pool_timeout: float | None = None,
        expiry_slack_ms: int = DEFAULT_EXPIRY_SLACK_MS,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if (client is None) == (url is None):
            raise ConfigurationError("RedisStore needs exactly one of `client` or `url`")
        if url is not None:
            url, url_options = _rc.split_url(url)
            prefix = url_options.get("prefix", prefix)
            hash_tag = url_options.get("hash_tag", hash_tag)
            # the URL's timeouts and pool size act exactly as the keywords of the same meaning
            # (and win over them, as redis-py's URL options win over its keywords)
            given_call = _url_number(url_options, "call_timeout", float)
            timeout = timeout if given_call is None else given_call
            given_timeout = _url_number(url_options, "socket_timeout", float)
            socket_timeout = socket_timeout if given_timeout is None else given_timeout
            given_connect = _url_number(url_options, "socket_connect_timeout", float)
            socket_connect_timeout = (
                socket_connect_timeout if given_connect is None else given_connect
            )
            given_pool = _url_number(url_options, "timeout", float)
            pool_timeout = pool_timeout if given_pool is None else given_pool
            given_max = _url_number(url_options, "max_connections", int)
            max_connections = max_connections if given_max is None else given_max
        _check_name("prefix", prefix)
        if hash_tag is not None:
            _check_name("hash_tag", hash_tag)
        if (
            expiry_slack_ms < 0
            or timeout <= 0
            or (socket_timeout is not None and socket_timeout <= 0)
            or retries < 0
            or (max_connections is not None and max_connections < 1)
        ):
            raise ConfigurationError(
                "expiry_slack_ms and retries must be >= 0, timeouts positive and "
                "max_connections at least 1"
            )
        if client is not None and _rc.decodes_responses(client):
            raise ConfigurationError(
                "RedisStore needs a client with decode_responses=False: stored responses are bytes"
            )
        if url is not None:
            options = _rc.ClientOptions(
                socket_timeout=socket_timeout or timeout,
                connect_timeout=socket_connect_timeout or socket_timeout or timeout,
                pool_timeout=timeout if pool_timeout is None else pool_timeout,
                max_connections=max_connections,
            )
            client = _rc.connect(url, options, DEFAULT_MAX_CONNECTIONS)
        self._client = cast(_rc.Client, client)
        self._owns_client = url is not None
        self._slack = expiry_slack_ms
        self._clock = clock
        self.timeout = timeout
        self.retries = retries
        self.breaker = CircuitBreaker(name="redis") if breaker is None else breaker
        """The store's `CircuitBreaker`: its ``state`` tells whether Redis is being skipped."""
        self._cluster = _rc.is_cluster(client)
        # calls queue here for one of the pool's connections: redis-py's cluster pools raise
        # instead of waiting, and a wait here can be told apart from a slow server (Gate)
        size = max_connections or DEFAULT_MAX_CONNECTIONS
        # redis-py's asyncio client ties the store to asyncio: its timer and clock are cheaper
        self._gate = Gate(
            size, timeout, self.breaker, "redis", deadline=asyncio.timeout_at, clock=_loop_time
        )
        # a single server's scripts skip redis-py's per-command machinery; a cluster keeps it
        self._direct = None if self._cluster else _rc.single_server(client, call_timeout=timeout)
        self.prefix = prefix
        self.hash_tag = hash_tag
        self._record_prefix = f"{prefix}:idem:"
        self._bucket_prefix = f"{prefix}:rl:"
        self._slot_prefix = f"{prefix}:cc:"
        self._fixed_bucket_prefix = None if hash_tag is None else f"{prefix}:rl:{{{hash_tag}}}:"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """A store on its own client for ``redis://``, ``rediss://``, ``unix://`` or
        ``redis+cluster://`` URLs. ``call_timeout``, ``socket_timeout``,
        ``socket_connect_timeout``, ``timeout`` (the pool's) and ``max_connections`` in the
        query act exactly as the keywords ``timeout``, ``socket_timeout``,
        ``socket_connect_timeout``, ``pool_timeout`` and ``max_connections`` (over which they
        win); ``prefix`` and ``hash_tag`` configure the store, and redis-py gets every other
        parameter."""
        return cls(url=url, **options)

    @property
    def client(self) -> Any:
        """The redis-py client underneath, for health checks and tooling."""
        return self._client

    def _now(self) -> int | str:
        """The caller's time in ms, or "" for the scripts to read the server's (_clock.lua)."""
        return "" if self._clock is None else int(self._clock() * 1000)

    def record_key(self, key: str) -> str:
        """The Redis key of an idempotency record; one key per script, so no hash tag."""
        return self._record_prefix + key

    def bucket_key(self, key: str) -> str:
        """The Redis key of a rate-limit bucket ``<tier>:<principal>``, hash-tagged by its
        principal (or by the fixed ``hash_tag``): one client's tiers share a slot."""
        if self._fixed_bucket_prefix is not None:
            return self._fixed_bucket_prefix + key
        return self._tagged(self._bucket_prefix, key)

    def _tagged(self, prefix: str, key: str) -> str:
        if self.hash_tag is not None:
            return f"{prefix}{{{self.hash_tag}}}:{key}"
        principal = key.partition(":")[2] or key
        tag = hashlib.blake2b(principal.encode("utf-8", "surrogatepass"), digest_size=8)
        return f"{prefix}{{{tag.hexdigest()}}}:{key}"

    def _run(
        self, name: str, keys: Sequence[str], args: Sequence[Any], *, repeatable: bool = True
    ) -> Awaitable[Any]:
        """Run ``lua/<name>.lua`` through the store's `Gate`: ``timeout`` bounds the wait on
        Redis (for a free connection while Redis answers none, then for the reply), not the
        time this process spends queued behind its own busy burst or starved of CPU. Only
        ``repeatable`` scripts are sent again after a broken connection."""
        retries = self.retries if repeatable else 0
        if self._direct is not None:
            return self._gate.call(name, self._direct.run_script, name, keys, args, retries)
        return self._gate.call(name, self._cluster_script, name, keys, args, retries)

    async def _cluster_script(
        self, name: str, keys: Sequence[str], args: Sequence[Any], retries: int
    ) -> Any:
        await self._initialized(name)
        return await _rc.run_script(self._client, name, keys, args, retries=retries)

    async def _initialized(self, operation: str) -> None:
        """The cluster's topology first: a command sent before it is known goes to a random
        node and comes back MOVED. A cluster whose topology cannot be read cannot serve."""
        try:
            await self._client.initialize()
        except Exception as exc:
            raise StoreUnavailable(
                f"redis cluster topology unavailable during {operation}: {exc}"
            ) from exc

    async def ping(self) -> None:
        if self._direct is not None:
            await self._gate.call("ping", self._direct.ping, self.retries)
        else:
            await self._gate.call("ping", self._cluster_ping)

    async def _cluster_ping(self) -> None:
        await self._initialized("ping")
        await _rc.ping(self._client, retries=self.retries)

    async def aclose(self) -> None:
        if self._direct is not None:
            await self._direct.aclose()
        if self._owns_client:
            await self._client.aclose()

    # -- idempotency ------------------------------------------------------------------------

    async def claim(self, key: str, fingerprint: str, token: str, *, lease_ms: int) -> Claim:
        reply = await self._run(
            "claim",
            [self.record_key(key)],
            [fingerprint, token, lease_ms, self._now(), lease_ms + self._slack],
        )
        return _claim(reply, fingerprint)

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
        args: list[Any] = []
        self._hit_arguments(hits, keys, args)
        # not repeatable: a hit whose connection broke may already have been counted
        reply = await self._run("hit", keys, args, repeatable=False)
        return _decisions(hits, reply)

    def _hit_arguments(
        self, hits: Sequence[RateLimitHit], keys: list[str], args: list[Any]
    ) -> None:
        """Append hit.lua's keys and arguments for ``hits`` to ``keys`` and ``args``."""
        args += (self._now(), self._slack)
        for one in hits:
            self.validate_hit(one)
            keys.append(self.bucket_key(one.key))
            args += (_ALGORITHM_CODES[one.algorithm], one.limit, one.window_ms, one.cost)

    @property
    def claims_with_hits(self) -> bool:
        """Whether `claim_and_hit` is one script: not on a cluster, where a record and the
        buckets of its request live in different slots."""
        return not self._cluster

    async def claim_and_hit(
        self, key: str, fingerprint: str, token: str, hits: Sequence[RateLimitHit], *, lease_ms: int
    ) -> tuple[Claim, list[RateLimitDecision]]:
        if self._cluster:
            raise ConfigurationError("claim_and_hit needs one slot; a cluster has several")
        keys = [self.record_key(key)]
        args: list[Any] = [fingerprint, token, lease_ms, self._now(), lease_ms + self._slack]
        self._hit_arguments(hits, keys, args)
        try:
            # not repeatable as it is: the hits may already have been counted
            claimed, charged = await self._run("claim_hit", keys, args, repeatable=False)
        except StoreUnavailable as exc:
            if not self.retries or not _rc.connection_lost(exc):
                raise
            # the connection broke, so the script may have run: the claim is safe to send
            # again (this token's own claim answers taken), the hits go once more, so such a
            # request may be counted twice, never run twice
            return await claim_then_hit(self, key, fingerprint, token, hits, lease_ms=lease_ms)
        claim = _claim(claimed, fingerprint)
        return claim, _decisions(hits, charged) if claim[0] else []

    # -- concurrency slots ------------------------------------------------------------------

    def slot_key(self, key: str) -> str:
        """The Redis key of a concurrency tier's holders, hash-tagged like the buckets so one
        request's slots are taken in one script on Redis Cluster too."""
        return self._tagged(self._slot_prefix, key)

    async def acquire_slots(
        self, slots: Sequence[SlotRequest], token: str, *, lease_ms: int
    ) -> list[SlotDecision]:
        if not slots:
            return []
        reply = await self._run(
            "concurrency_acquire",
            [self.slot_key(key) for key, _ in slots],
            [token, lease_ms, self._now(), self._slack, *(limit for _, limit in slots)],
        )
        acquired = reply[0] == 1
        return [
            SlotDecision(acquired, limit, int(count))
            for (_, limit), count in zip(slots, reply[1:], strict=True)
        ]

    async def renew_slots(self, keys: Sequence[str], token: str, *, lease_ms: int) -> bool:
        if not keys:
            return True
        reply = await self._run(
            "concurrency_renew",
            [self.slot_key(key) for key in keys],
            [token, lease_ms, self._now(), self._slack],
        )
        return bool(reply == 1)

    async def release_slots(self, keys: Sequence[str], token: str) -> None:
        if keys:
            await self._run("concurrency_release", [self.slot_key(key) for key in keys], [token])


def _claim(reply: Any, fingerprint: str) -> Claim:
    """claim.lua's reply as a `Claim`."""
    if reply[0] == 1:
        return Claim(True, fingerprint)
    holder = reply[1].decode()
    if len(reply) == 4:
        return Claim(False, holder, bytes(reply[3]), 0)
    return Claim(False, holder, None, int(reply[2]))


def _decisions(hits: Sequence[RateLimitHit], reply: Any) -> list[RateLimitDecision]:
    """hit.lua's reply, four integers per hit, as decisions."""
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
