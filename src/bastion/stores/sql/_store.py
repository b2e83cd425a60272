"""`SQLStore`: idempotency records and rate-limit buckets in PostgreSQL, SQLite or MySQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from functools import cached_property
from typing import Any, Self, TypeVar

import anyio
from sqlalchemy import MetaData, inspect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import StaticPool

from bastion._core.algorithms import State, decide, expires_at
from bastion.exceptions import ConfigurationError, StoreError
from bastion.stores._breaker import CircuitBreaker
from bastion.stores._protocols import (
    Claim,
    RateLimitDecision,
    RateLimitHit,
    SlotDecision,
    SlotRequest,
    claim_then_hit,
)
from bastion.stores.sql._clock import StoreClock
from bastion.stores.sql._dialects import PING, Decided, Dialect, decide_arguments, dialect_for
from bastion.stores.sql._engine import build_engine
from bastion.stores.sql._errors import CAUGHT, backoff, is_transient, wrap
from bastion.stores.sql._schema import DEFAULT_PREFIX, define_tables
from bastion.stores.sql._slots import LOCK_TOKEN, SlotStatements
from bastion.typing import Clock

__all__ = ["SQLStore"]

T = TypeVar("T")

_ATTEMPTS = 5


class SQLStore:
    """Idempotency records and rate-limit buckets in a SQL database shared by every process.

    Each primitive is a single statement or one short transaction; see ``docs/stores.md``
    for the statements per dialect. ``engine`` is your `AsyncEngine` (left open by `aclose`)
    or ``url`` builds one the store owns. The tables are ``<table_prefix>records`` and
    ``<table_prefix>buckets``, defined on ``metadata`` (yours, for Alembic) or a private one;
    `create_tables` creates them for the simple path. Everything is decided on the database's
    clock, so processes whose hosts' clocks disagree still agree: rate-limit windows exactly
    (the clock is read in the deciding statement, once the buckets are locked), lease, slot and
    expiry deadlines to within a round trip (each process measures the database clock's
    offset from its own every `CLOCK_SYNC_INTERVAL` seconds, in the statement that is due
    next). ``clock`` (seconds) replaces the database's, as tests with a `FakeClock` do.
    ``breaker`` (a `CircuitBreaker`, one per store by default) skips the database after
    consecutive failures, so each middleware's fail-open or fail-closed answer comes at once
    while it is down; ``CircuitBreaker(failures=0)`` turns it off.
    """

    backend = "sql"

    def __init__(
        self,
        engine: AsyncEngine | None = None,
        *,
        url: str | None = None,
        table_prefix: str = DEFAULT_PREFIX,
        clock: Clock | None = None,
        metadata: MetaData | None = None,
        engine_options: Mapping[str, Any] | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        native_autocommit = False
        if url is not None and engine is None:
            engine, native_autocommit = build_engine(url, engine_options)
            self._owns_engine = True
        elif engine is not None and url is None:
            if not isinstance(engine, AsyncEngine):
                raise ConfigurationError(
                    "SQLStore needs an AsyncEngine (sqlalchemy.ext.asyncio.create_async_engine)"
                )
            if engine_options:
                raise ConfigurationError("engine_options only apply when the store builds one")
            self._owns_engine = False
        else:
            raise ConfigurationError("SQLStore needs exactly one of an engine or a url")
        self.engine = engine
        self.metadata = metadata if metadata is not None else MetaData()
        """The `MetaData` holding the store's tables."""
        self.tables = define_tables(self.metadata, table_prefix)
        self._dialect: Dialect = dialect_for(engine.dialect.name, self.tables)
        self._autocommit = self._dialect.autocommit or native_autocommit
        """Whether single statements run outside a transaction."""
        self._explicit_begin = native_autocommit
        """Whether a transaction must be begun with a statement (the connection autocommits)."""
        self._single = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if self._dialect.autocommit and not native_autocommit
            else engine
        )
        # an in-memory SQLite database lives in one shared connection: take turns on it
        self._serial = anyio.Lock() if isinstance(engine.pool, StaticPool) else None
        self._time = StoreClock(self._dialect.name, clock)
        self._now = self._time.now
        self._decision_now = self._time.decision_now
        self.breaker = CircuitBreaker(name="sql store") if breaker is None else breaker
        """Skips the database after consecutive failures (see `CircuitBreaker`), so a dead
        database costs each request nothing once it is known to be down."""

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """A store owning an engine built from a SQLAlchemy URL (``postgresql+asyncpg://…``,
        ``sqlite+aiosqlite:///path.db``, ``mysql+asyncmy://…``); a URL naming no driver gets
        the one above. ``engine_options`` go to `create_async_engine`."""
        return cls(url=url, **options)

    # -- plumbing -------------------------------------------------------------------------

    @asynccontextmanager
    async def _connect(self, *, transaction: bool = True) -> AsyncIterator[AsyncConnection]:
        """A connection in a store transaction (SQLite: holding the write lock), committed
        when the block ends, rolled back when it raises. Errors are not mapped here."""
        async with AsyncExitStack() as stack:
            if self._serial is not None:
                await stack.enter_async_context(self._serial)
            if not transaction:
                yield await stack.enter_async_context(self._single.connect())
                return
            conn = await stack.enter_async_context(self.engine.connect())
            await stack.enter_async_context(conn.begin())
            await self._begin(conn)
            yield conn

    async def _begin(self, conn: AsyncConnection) -> None:
        if self._explicit_begin:
            # SQLAlchemy's COMMIT and ROLLBACK end it, after which autocommit resumes
            await conn.exec_driver_sql("START TRANSACTION")
        await self._dialect.begin(conn)

    async def _run(
        self,
        operation: str,
        work: Callable[[AsyncConnection], Awaitable[T]],
        *,
        single: bool = False,
    ) -> T:
        """Run ``work`` in one transaction (or, for a single statement on a dialect that
        allows it, outside one), again on transient conflicts, mapping every failure; through
        the circuit breaker, so a database known to be down is not waited for."""
        return await self.breaker.call(lambda: self._attempt(operation, work, single))

    async def _attempt(
        self, operation: str, work: Callable[[AsyncConnection], Awaitable[T]], single: bool
    ) -> T:
        attempt = 0
        while True:
            try:
                async with self._connect(transaction=not (single and self._autocommit)) as conn:
                    if self._time.due():
                        await self._time.measure(conn)
                    return await work(conn)
            except CAUGHT as exc:
                attempt += 1
                if attempt < _ATTEMPTS and is_transient(exc):
                    await anyio.sleep(backoff(attempt))
                    continue
                raise wrap(exc, operation) from exc

    async def ping(self) -> None:
        async def work(conn: AsyncConnection) -> None:
            await conn.execute(PING)

        await self._run("ping", work, single=True)

    async def aclose(self) -> None:
        if self._owns_engine:
            await self.engine.dispose()

    async def create_tables(self) -> None:
        """Create the store's tables and indexes if they do not exist (no other tables of a
        shared `MetaData`). Use Alembic instead when you manage migrations.

        Several processes may call it at start-up at once: losing the race to create a
        table is not an error once the tables exist.
        """
        tables = [self.tables.records, self.tables.buckets, self.tables.slots]
        attempt = 0
        while True:
            try:
                async with self.engine.begin() as conn:
                    await conn.run_sync(self.metadata.create_all, tables=tables)
                    if self._dialect.decides_in_database:
                        # tables from an older bastion: add this version's decision routine
                        await self._dialect.install(conn)
                return
            except CAUGHT as exc:
                # another process created a table first: done if it made both, else go on
                # (create_all skips what exists)
                if await self._tables_exist():
                    return
                attempt += 1
                if attempt >= _ATTEMPTS:
                    raise wrap(exc, "create_tables") from exc

    async def _tables_exist(self) -> bool:
        names = (self.tables.records.name, self.tables.buckets.name, self.tables.slots.name)
        try:
            async with self.engine.connect() as conn:
                found = await conn.run_sync(
                    lambda sync: [inspect(sync).has_table(name) for name in names]
                )
        except CAUGHT:
            return False
        return all(found)

    async def cleanup(self, *, batch: int = 1000) -> int:
        """Delete expired records and buckets, ``batch`` rows per statement; the count.

        Expired rows are already ignored, so this only reclaims space: run it every few
        minutes from a scheduler or a background task. Each batch is its own short
        transaction, so it never holds many locks.
        """
        if batch < 1:
            raise ConfigurationError("batch must be at least 1")
        total = 0
        for table in ("records", "buckets", "slots"):
            while True:

                async def work(conn: AsyncConnection, table: str = table) -> int:
                    stmt = self._dialect.cleanup(table, self._now(), batch)
                    return (await conn.execute(stmt)).rowcount

                deleted = await self._run("cleanup", work, single=True)
                total += deleted
                if deleted < batch:
                    break
        return total

    # -- idempotency ----------------------------------------------------------------------

    def _claim_params(self, key: str, fingerprint: str, token: str) -> dict[str, Any]:
        dialect = self._dialect
        return {
            "p_key": dialect.key(key),
            "p_token": dialect.token(token),
            "p_fingerprint": fingerprint,
        }

    async def claim(self, key: str, fingerprint: str, token: str, *, lease_ms: int) -> Claim:
        dialect = self._dialect
        params = self._claim_params(key, fingerprint, token)

        async def work(conn: AsyncConnection) -> Claim | None:
            now = self._now()
            params["p_now"], params["p_until"] = now, now + lease_ms
            acquired, row = await dialect.claim(conn, params)
            return Claim(True, fingerprint) if acquired else _held_by_another(row, now)

        for _ in range(_ATTEMPTS):
            claim = await self._run("claim", work, single=True)
            if claim is not None:
                return claim
        raise StoreError(f"claim on {key!r} kept racing with other writers; try again")

    def _held(self, key: str, token: str, now: int) -> dict[str, Any]:
        return {
            "p_key": self._dialect.key(key),
            "p_token": self._dialect.token(token),
            "p_now": now,
        }

    async def _update(
        self, operation: str, stmt: Any, params: Callable[[int], dict[str, Any]]
    ) -> bool:
        async def work(conn: AsyncConnection) -> bool:
            return bool((await conn.execute(stmt, params(self._now()))).rowcount == 1)

        return await self._run(operation, work, single=True)

    async def renew(self, key: str, token: str, *, lease_ms: int) -> bool:
        return await self._update(
            "renew",
            self._dialect.renew,
            lambda now: {**self._held(key, token, now), "p_until": now + lease_ms},
        )

    async def complete(self, key: str, token: str, response: bytes, *, ttl_ms: int) -> bool:
        return await self._update(
            "complete",
            self._dialect.complete,
            lambda now: {
                **self._held(key, token, now),
                "p_response": response,
                "p_until": now + ttl_ms,
            },
        )

    @asynccontextmanager
    async def connect_transaction(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a begun transaction for `bastion.idempotency.transaction`, which
        commits or rolls it back itself; see `TransactionalIdempotencyStore`."""
        async with AsyncExitStack() as stack:
            try:
                if self._serial is not None:
                    await stack.enter_async_context(self._serial)
                conn = await stack.enter_async_context(self.engine.connect())
                if self._explicit_begin:
                    # the application's statements run here, and may roll back and go on:
                    # the connection leaves autocommit, as a MySQL connection normally is
                    level = self.engine.dialect.default_isolation_level
                    await conn.execution_options(isolation_level=level)
                await conn.begin()
                await self._dialect.begin(conn)
            except CAUGHT as exc:
                with anyio.CancelScope(shield=True):
                    await stack.aclose()
                raise wrap(exc, "transaction") from exc
            yield conn

    async def complete_in(
        self, connection: AsyncConnection, key: str, token: str, response: bytes, *, ttl_ms: int
    ) -> bool:
        """`complete` inside ``connection``'s transaction, left for the caller to commit."""
        now = self._now()
        params = {**self._held(key, token, now), "p_response": response, "p_until": now + ttl_ms}
        try:
            return bool((await connection.execute(self._dialect.complete, params)).rowcount == 1)
        except CAUGHT as exc:
            raise wrap(exc, "complete") from exc

    async def release(self, key: str, token: str) -> bool:
        return await self._update(
            "release", self._dialect.release, lambda now: self._held(key, token, now)
        )

    # -- rate limits ----------------------------------------------------------------------

    async def hit(self, hits: Sequence[RateLimitHit]) -> list[RateLimitDecision]:
        if not hits:
            return []
        dialect = self._dialect
        keys = [dialect.key(one.key) for one in hits]
        if dialect.decides_in_database:
            return await self._decide_in_database(hits, keys)
        ordered = sorted(set(keys))

        async def work(conn: AsyncConnection) -> list[RateLimitDecision]:
            rows, database_now = await dialect.lock_buckets(conn, ordered)
            # read after the locks, so it never runs behind a writer's
            now = database_now if self._time.on_database else self._now()
            decisions: list[RateLimitDecision] = []
            writes: dict[Any, dict[str, Any]] = {}
            for one, key in zip(hits, keys, strict=True):
                *values, until = rows[key]
                state: State | None = None if until <= now else (values[0], values[1], values[2])
                decision, new = decide(one, state, now)
                decisions.append(decision)
                writes[key] = {
                    "b_key": key,
                    "b_0": new[0],
                    "b_1": new[1],
                    "b_2": new[2],
                    "b_until": expires_at(one, new),
                }
            if all(d.allowed for d in decisions):
                await conn.execute(dialect.write_bucket, list(writes.values()))
            return decisions

        return await self._run("hit", work)

    async def _decide_in_database(
        self, hits: Sequence[RateLimitHit], keys: list[Any]
    ) -> list[RateLimitDecision]:
        """One statement (autocommit where the connection allows): the database's routine
        locks, decides and writes every tier."""
        dialect = self._dialect

        async def work(conn: AsyncConnection) -> list[RateLimitDecision]:
            now = self._decision_now()
            decided = await dialect.installing(conn, dialect.decide, conn, hits, keys, now)
            return _decisions(hits, decided)

        return await self._run("hit", work, single=True)

    @property
    def claims_with_hits(self) -> bool:
        """Whether `claim_and_hit` is one statement here: on PostgreSQL."""
        return self._dialect.joins_claims

    async def claim_and_hit(
        self, key: str, fingerprint: str, token: str, hits: Sequence[RateLimitHit], *, lease_ms: int
    ) -> tuple[Claim, list[RateLimitDecision]]:
        """One statement for a free key (PostgreSQL: the claim's insert, and the decision
        function run only when it took the key). A key whose lease ran out, or that was
        released while the statement ran, takes `claim` and then `hit`, as the two calls."""
        dialect = self._dialect
        if not dialect.joins_claims:
            raise ConfigurationError(f"claim_and_hit is not one statement on {dialect.name}")
        params = self._claim_params(key, fingerprint, token)
        params.update(decide_arguments(hits, [dialect.key(one.key) for one in hits]))

        async def work(conn: AsyncConnection) -> tuple[int, bool, Any, list[Decided]]:
            now = self._now()
            params["p_now"], params["p_until"] = now, now + lease_ms
            params["p_decide_now"] = self._decision_now()
            answer = await dialect.installing(conn, dialect.claim_and_decide, conn, params)
            return now, *answer

        now, acquired, row, decided = await self._run("claim", work, single=True)
        if acquired:
            return Claim(True, fingerprint), _decisions(hits, decided)
        held = _held_by_another(row, now)
        if held is not None:
            return held, []
        return await claim_then_hit(self, key, fingerprint, token, hits, lease_ms=lease_ms)

    # -- concurrency slots ----------------------------------------------------------------

    @cached_property
    def _slot_statements(self) -> SlotStatements:
        return SlotStatements(self.tables.slots, self._dialect.name)

    async def acquire_slots(
        self, slots: Sequence[SlotRequest], token: str, *, lease_ms: int
    ) -> list[SlotDecision]:
        if not slots:
            return []
        statements = self._slot_statements
        dialect = self._dialect
        bound = [(dialect.key(key), limit) for key, limit in slots]
        mine, lock = dialect.token(token), dialect.token(LOCK_TOKEN)

        async def work(conn: AsyncConnection) -> list[SlotDecision]:
            now = self._now()
            return await statements.acquire(conn, bound, mine, lock, now, now + lease_ms)

        return await self._run("acquire_slots", work)

    async def renew_slots(self, keys: Sequence[str], token: str, *, lease_ms: int) -> bool:
        if not keys:
            return True
        statements = self._slot_statements
        bound = sorted({self._dialect.key(key) for key in keys})

        async def work(conn: AsyncConnection) -> bool:
            now = self._now()
            mine = self._dialect.token(token)
            return await statements.renew(conn, bound, mine, now, now + lease_ms)

        return await self._run("renew_slots", work, single=True)

    async def release_slots(self, keys: Sequence[str], token: str) -> None:
        if not keys:
            return
        statements = self._slot_statements
        bound = sorted({self._dialect.key(key) for key in keys})

        async def work(conn: AsyncConnection) -> None:
            await statements.release(conn, bound, self._dialect.token(token))

        await self._run("release_slots", work, single=True)


def _decisions(hits: Sequence[RateLimitHit], decided: Sequence[Decided]) -> list[RateLimitDecision]:
    return [
        RateLimitDecision(allowed, one.limit, remaining, reset, retry)
        for one, (allowed, remaining, reset, retry) in zip(hits, decided, strict=True)
    ]


def _held_by_another(row: Any, now: int) -> Claim | None:
    """The claim a held or stored record (as the claim statement read it) answers; None when
    it was released, or its lease ran out, while the statement ran: claim again."""
    if row is None:
        return None
    _, held_fingerprint, response, until = row
    if response is None and until <= now:
        return None
    return Claim(False, held_fingerprint, response, until - now if response is None else 0)
