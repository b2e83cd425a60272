"""SQL store specifics: schema and Alembic, cleanup, key handling, errors, statements per call."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, event, func, inspect, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import create_async_engine

import bastion.stores
import bastion.stores.sql._store as store_module
from bastion.exceptions import ConfigurationError, StoreError, StoreUnavailable
from bastion.stores import CircuitBreaker, RateLimitHit
from bastion.stores.sql import SQLStore, build_metadata, define_tables, metadata
from bastion.stores.sql._dialects import dialect_for
from bastion.stores.sql._errors import is_transient, wrap
from bastion.stores.sql._functions import drop_ddl
from tests.conftest import FakeClock, service_url

pytestmark = pytest.mark.anyio

LEASE = 30_000
TTL = 86_400_000


def _hit(key: str, limit: int = 3, window_ms: int = 60_000) -> RateLimitHit:
    return RateLimitHit(key=key, algorithm="fixed_window", limit=limit, window_ms=window_ms)


async def _count(store: SQLStore, table: Table) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


# -- schema ---------------------------------------------------------------------------------


def test_module_metadata_names_the_default_tables() -> None:
    """`bastion.stores.sql.metadata` is ready for Alembic's target_metadata."""
    assert set(metadata.tables) == {"bastion_records", "bastion_buckets", "bastion_slots"}
    records = metadata.tables["bastion_records"]
    assert [c.name for c in records.primary_key] == ["key"]
    assert {i.name for i in records.indexes} == {"ix_bastion_records_expires_at"}
    buckets = metadata.tables["bastion_buckets"]
    assert {c.name for c in buckets.columns} == {
        "key",
        "state_0",
        "state_1",
        "state_2",
        "expires_at",
    }


def test_tables_join_an_application_metadata() -> None:
    """define_tables adds to your MetaData once; the store reuses those very tables."""
    mine = MetaData()
    Table("orders", mine, Column("id", Integer, primary_key=True))
    tables = define_tables(mine, "app_")
    assert define_tables(mine, "app_") == tables
    store = SQLStore(url="sqlite+aiosqlite://", table_prefix="app_", metadata=mine)
    assert store.tables.records is mine.tables["app_records"]
    assert set(mine.tables) == {"orders", "app_records", "app_buckets", "app_slots"}
    assert set(build_metadata("x_").tables) == {"x_records", "x_buckets", "x_slots"}


@pytest.mark.parametrize("prefix", ["", "1abc", "bad-prefix", "a b", "x" * 41, 'q"'])
def test_unusable_prefix_is_refused(prefix: str) -> None:
    """A prefix that would need quoting or overflow identifier limits fails at start-up."""
    with pytest.raises(ConfigurationError, match="table_prefix"):
        build_metadata(prefix)


async def test_create_tables_creates_only_the_store_tables(tmp_path: Path) -> None:
    """create_tables is idempotent and leaves the other tables of a shared MetaData alone."""
    mine = MetaData()
    Table("orders", mine, Column("id", Integer, primary_key=True))
    store = SQLStore(url=f"sqlite+aiosqlite:///{tmp_path / 'db'}", metadata=mine)
    await store.create_tables()
    await store.create_tables()
    async with store.engine.connect() as conn:
        names = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
    assert sorted(names) == ["bastion_buckets", "bastion_records", "bastion_slots"]
    await store.aclose()


async def test_concurrent_create_tables_all_succeed(sql_store: SQLStore) -> None:
    """Workers starting together may all call create_tables: none of them fails."""
    url = sql_store.engine.url.render_as_string(hide_password=False)
    prefix = f"c{uuid.uuid4().hex[:12]}_"
    stores = [SQLStore(url=url, table_prefix=prefix) for _ in range(4)]
    try:
        async with anyio.create_task_group() as tg:
            for store in stores:
                tg.start_soon(store.create_tables)
        assert (await stores[0].claim("k", "fp", "t", lease_ms=LEASE)).acquired
    finally:
        async with stores[0].engine.begin() as conn:
            await conn.run_sync(stores[0].metadata.drop_all)
        for store in stores:
            await store.aclose()


async def test_alembic_sees_no_difference_after_create_tables(sql_store: SQLStore) -> None:
    """Alembic autogenerate finds the created tables identical to the MetaData (no spurious
    migrations from the per-dialect key types)."""
    ours = set(sql_store.metadata.tables)

    def include(name: str | None, kind: str, parents: Any) -> bool:
        return kind != "table" or name in ours  # other tests' tables share the database

    def diff(sync_conn: Any) -> list[Any]:
        context = MigrationContext.configure(sync_conn, opts={"include_name": include})
        return list(compare_metadata(context, sql_store.metadata))

    async with sql_store.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


# -- cleanup --------------------------------------------------------------------------------


async def test_cleanup_deletes_only_expired_rows(sql_store: SQLStore, clock: FakeClock) -> None:
    """cleanup removes expired records and buckets in batches, counts them, keeps live ones."""
    for i in range(5):
        await sql_store.claim(f"lapsed{i}", "fp", "t", lease_ms=1_000)
    await sql_store.claim("kept", "fp", "t", lease_ms=1_000)
    await sql_store.complete("kept", "t", b"body", ttl_ms=TTL)
    await sql_store.hit([_hit("short", window_ms=1_000)])
    await sql_store.hit([_hit("long", window_ms=3_600_000)])
    clock.advance(2.0)
    assert await sql_store.cleanup(batch=2) == 6
    assert await _count(sql_store, sql_store.tables.records) == 1
    assert await _count(sql_store, sql_store.tables.buckets) == 1
    assert (await sql_store.claim("kept", "fp", "x", lease_ms=LEASE)).response == b"body"
    assert (await sql_store.hit([_hit("long", window_ms=3_600_000)]))[0].remaining == 1
    assert await sql_store.cleanup() == 0


async def test_cleanup_refuses_an_empty_batch(sql_store: SQLStore) -> None:
    """A batch below one row is a configuration mistake, not an endless loop."""
    with pytest.raises(ConfigurationError):
        await sql_store.cleanup(batch=0)


# -- keys -----------------------------------------------------------------------------------


async def test_keys_compare_byte_for_byte(sql_store: SQLStore) -> None:
    """Keys differing only in case or trailing spaces are distinct (no ci/PAD SPACE collation)."""
    for key in ("key", "Key", "key ", "ключ"):
        assert (await sql_store.claim(key, "fp", "t", lease_ms=LEASE)).acquired
    for key in ("bucket", "Bucket", "bucket "):
        assert (await sql_store.hit([_hit(key, limit=1)]))[0].allowed


async def test_tokens_compare_byte_for_byte(sql_store: SQLStore) -> None:
    """A token differing from the holder's only in case cannot complete (fencing is exact)."""
    await sql_store.claim("k", "fp", "abc", lease_ms=LEASE)
    assert await sql_store.complete("k", "ABC", b"x", ttl_ms=TTL) is False
    assert await sql_store.complete("k", "abc", b"x", ttl_ms=TTL) is True


async def test_long_keys_and_tokens_are_stored_as_digests(sql_store: SQLStore) -> None:
    """Keys and tokens beyond the column size still work and never collide on a prefix."""
    first, second = "k" * 1000 + "1", "k" * 1000 + "2"
    token = "t" * 300
    assert (await sql_store.claim(first, "fp", token, lease_ms=LEASE)).acquired
    assert (await sql_store.claim(second, "fp", token, lease_ms=LEASE)).acquired
    assert await sql_store.complete(first, "t" * 299 + "u", b"no", ttl_ms=TTL) is False
    assert await sql_store.complete(first, token, b"yes", ttl_ms=TTL) is True
    assert (await sql_store.claim(first, "fp", "x", lease_ms=LEASE)).response == b"yes"
    assert (await sql_store.hit([_hit("b" * 600, limit=1)]))[0].allowed
    assert not (await sql_store.hit([_hit("b" * 600, limit=1)]))[0].allowed


async def test_large_response_round_trips(sql_store: SQLStore) -> None:
    """A multi-megabyte binary response is stored and returned intact (LONGBLOB on MySQL)."""
    payload = bytes(range(256)) * 8192  # 2 MiB
    await sql_store.claim("big", "fp", "t", lease_ms=LEASE)
    assert await sql_store.complete("big", "t", payload, ttl_ms=TTL) is True
    assert (await sql_store.claim("big", "fp", "u", lease_ms=LEASE)).response == payload


async def test_concurrent_takeover_has_one_winner(sql_store: SQLStore, clock: FakeClock) -> None:
    """Of many simultaneous claims on a lapsed lease exactly one takes the key over."""
    await sql_store.claim("hot", "fp", "crashed", lease_ms=1_000)
    clock.advance(2.0)
    won: list[str] = []

    async def one(i: int) -> None:
        if (await sql_store.claim("hot", "fp", f"t{i}", lease_ms=LEASE)).acquired:
            won.append(f"t{i}")

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(one, i)
    assert len(won) == 1
    assert await sql_store.complete("hot", "crashed", b"stale", ttl_ms=TTL) is False
    assert await sql_store.complete("hot", won[0], b"fresh", ttl_ms=TTL) is True


async def test_concurrent_requests_sharing_buckets_in_any_order(sql_store: SQLStore) -> None:
    """Requests naming the same buckets in opposite orders neither deadlock for good nor
    overspend: exactly the tighter limit passes and the other bucket is charged as much."""
    allowed: list[bool] = []

    async def one(i: int) -> None:
        tiers = [_hit("x", limit=30), _hit("y", limit=1000)]
        decisions = await sql_store.hit(tiers if i % 2 else tiers[::-1])
        allowed.append(all(d.allowed for d in decisions))

    async with anyio.create_task_group() as tg:
        for i in range(100):
            tg.start_soon(one, i)
    assert allowed.count(True) == 30
    assert (await sql_store.hit([_hit("y", limit=1000)]))[0].remaining == 1000 - 31


async def test_duplicate_bucket_in_one_request(sql_store: SQLStore) -> None:
    """Two hits on one bucket in a request are decided like the memory store does."""
    decisions = await sql_store.hit([_hit("same", limit=5), _hit("same", limit=5)])
    assert [d.remaining for d in decisions] == [4, 4]
    assert await sql_store.hit([]) == []


# -- statements per operation ---------------------------------------------------------------


@contextmanager
def _statements(store: SQLStore) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        verb = statement.split(None, 1)[0].upper()
        if verb != "BEGIN":  # SQLite's BEGIN IMMEDIATE: no round trip, the file is local
            seen.append(verb)

    event.listen(store.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", record)


_TAKE_OVER = ["INSERT", "SELECT", "UPDATE"]  # the conditional UPDATE lets one taker win
_STATEMENTS: list[tuple[str, Any, list[str]]] = [
    # operation, call, statements on PostgreSQL and SQLite; _MYSQL lists MySQL's differences
    ("claim, free key", lambda s: s.claim("k", "fp", "t", lease_ms=LEASE), ["INSERT"]),
    ("claim, in flight", lambda s: s.claim("k", "fp", "u", lease_ms=LEASE), ["INSERT", "SELECT"]),
    ("renew", lambda s: s.renew("k", "t", lease_ms=LEASE), ["UPDATE"]),
    ("complete", lambda s: s.complete("k", "t", b"x", ttl_ms=TTL), ["UPDATE"]),
    ("claim, replay", lambda s: s.claim("k", "fp", "v", lease_ms=LEASE), ["INSERT", "SELECT"]),
    ("release, refused", lambda s: s.release("k", "v"), ["DELETE"]),
    ("hit, allowed", lambda s: s.hit([_hit("a", limit=1)]), ["INSERT", "UPDATE"]),
    ("hit, denied", lambda s: s.hit([_hit("a", limit=1)]), ["INSERT"]),
    ("hit, 3 tiers", lambda s: s.hit([_hit(k) for k in "xyz"]), ["INSERT", "UPDATE"]),
    ("ping", lambda s: s.ping(), ["SELECT"]),
    ("claim, lapsed", lambda s: s.claim("gone", "fp", "t", lease_ms=1), ["INSERT"]),
    ("claim, take over", lambda s: s.claim("gone", "fp", "u", lease_ms=LEASE), _TAKE_OVER),
]
_MYSQL = {
    # MariaDB: INSERT … ON DUPLICATE KEY UPDATE … RETURNING, the row it met or made
    "claim, free key": ["INSERT"],
    "claim, in flight": ["INSERT"],
    "claim, replay": ["INSERT"],
    "claim, lapsed": ["INSERT"],
    "claim, take over": ["INSERT"],  # ON DUPLICATE KEY UPDATE takes it over
    # one CALL of the decision procedure: it locks, decides and writes every tier
    "hit, allowed": ["CALL"],
    "hit, denied": ["CALL"],
    "hit, 3 tiers": ["CALL"],
}


_SQLITE = {
    # INSERT … ON CONFLICT DO UPDATE (a no-op unless the lease ran out) … RETURNING
    "claim, in flight": ["INSERT"],
    "claim, replay": ["INSERT"],
    "claim, take over": ["INSERT"],
}


_POSTGRES = {
    # one WITH … INSERT … ON CONFLICT DO NOTHING … SELECT: the claim and the row it met
    "claim, free key": ["WITH"],
    "claim, in flight": ["WITH"],
    "claim, replay": ["WITH"],
    "claim, lapsed": ["WITH"],
    "claim, take over": ["WITH", "UPDATE"],
    # one SELECT of the decision function: it locks, decides and writes every tier
    "hit, allowed": ["SELECT"],
    "hit, denied": ["SELECT"],
    "hit, 3 tiers": ["SELECT"],
}


async def test_statements_per_operation(sql_store: SQLStore, clock: FakeClock) -> None:
    """Each primitive costs the statements documented in docs/stores.md, no more: a claim is
    one statement on PostgreSQL, one INSERT plus at most one SELECT elsewhere;
    renew/complete/release one statement; a rate-limit decision one upsert (plus a locking
    SELECT on MySQL) and one UPDATE when allowed."""
    differences = {"mysql": _MYSQL, "postgresql": _POSTGRES, "sqlite": _SQLITE}.get(
        sql_store.engine.dialect.name, {}
    )
    for name, call, expected in _STATEMENTS:
        if name == "claim, take over":
            clock.advance(0.01)
        with _statements(sql_store) as seen:
            await call(sql_store)
        assert seen == differences.get(name, expected), name


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://postgres@127.0.0.1:1/test",
        "mysql+asyncmy://root@127.0.0.1:1/test",
    ],
    ids=["postgres", "mysql"],
)
async def test_unreachable_database_is_store_unavailable(url: str) -> None:
    """A server that refuses connections gives StoreUnavailable on every operation at once.

    (SQLite's unopenable file is covered by the mapping test below: aiosqlite leaves a worker
    thread behind after a failed connect, which pytest reports in the next test.)"""
    store = SQLStore(url=url)
    with pytest.raises(StoreUnavailable) as info:
        await store.ping()
    assert info.value.__cause__ is not None
    with pytest.raises(StoreUnavailable):
        await store.claim("k", "fp", "t", lease_ms=LEASE)
    with pytest.raises(StoreUnavailable):
        await store.hit([_hit("b")])
    await store.aclose()


async def test_breaker_skips_an_unreachable_database() -> None:
    """After ``failures`` refused connections the breaker opens: calls fail at once without
    connecting, until the cool-down lets one probe through."""
    clock = FakeClock()
    breaker = CircuitBreaker(failures=2, reset_after=5, clock=clock)
    store = SQLStore(url="postgresql+asyncpg://postgres@127.0.0.1:1/test", breaker=breaker)
    connects = 0

    @event.listens_for(store.engine.sync_engine, "do_connect")
    def count(*args: Any) -> None:
        nonlocal connects
        connects += 1

    for _ in range(2):
        with pytest.raises(StoreUnavailable):
            await store.ping()
    tried = connects
    assert breaker.state == "open"
    with pytest.raises(StoreUnavailable, match="circuit breaker open"):
        await store.claim("k", "fp", "t", lease_ms=LEASE)
    assert connects == tried
    clock.advance(5)
    with pytest.raises(StoreUnavailable):
        await store.ping()  # the probe connects, fails, and opens the breaker again
    assert connects > tried
    assert breaker.state == "open"
    await store.aclose()


async def test_missing_tables_are_a_store_error(tmp_path: Path) -> None:
    """A database without the tables answers StoreError (not an outage) naming the cause."""
    store = SQLStore(url=f"sqlite+aiosqlite:///{tmp_path / 'db'}")
    with pytest.raises(StoreError) as info:
        await store.claim("k", "fp", "t", lease_ms=LEASE)
    assert not isinstance(info.value, StoreUnavailable)
    assert "no such table" in str(info.value)
    await store.aclose()


class _Orig(Exception):
    def __init__(self, *args: Any, **attributes: Any) -> None:
        super().__init__(*args)
        self.__dict__.update(attributes)


def _db_error(orig: Exception) -> sa_exc.OperationalError:
    return sa_exc.OperationalError("UPDATE …", {}, orig)


@pytest.mark.parametrize(
    "orig",
    [
        _Orig("deadlock", sqlstate="40P01"),
        _Orig("could not serialize", sqlstate="40001"),
        _Orig(1213, "Deadlock found when trying to get lock"),
        _Orig(1205, "Lock wait timeout exceeded"),
        _Orig("database is locked", sqlite_errorcode=5),
    ],
)
def test_conflicts_are_retried(orig: Exception) -> None:
    """Deadlocks, serialization failures and SQLite's busy lock are transient."""
    assert is_transient(_db_error(orig))


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (ConnectionRefusedError(111, "refused"), True),
        (_db_error(_Orig(2013, "Lost connection to MySQL server")), True),
        (_db_error(_Orig("terminating connection", sqlstate="57P01")), True),
        (_db_error(_Orig("unable to open database file", sqlite_errorcode=14)), True),
        (_db_error(_Orig("unique violation", sqlstate="23505")), False),
        (sa_exc.TimeoutError("QueuePool limit reached"), True),
    ],
)
def test_errors_map_to_store_errors(error: Exception, unavailable: bool) -> None:
    """Lost or refused connections are outages; other failures are plain StoreErrors."""
    mapped = wrap(error, "claim")
    assert isinstance(mapped, StoreError)
    assert isinstance(mapped, StoreUnavailable) is unavailable
    assert not is_transient(error)


async def test_transient_conflict_is_retried(
    sql_store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deadlock victim runs again; one that keeps losing ends in StoreError."""
    monkeypatch.setattr(store_module, "backoff", lambda attempt: 0)
    dialect = sql_store._dialect
    real_claim = dialect.claim
    failures = [_db_error(_Orig("deadlock", sqlstate="40P01"))]

    async def flaky(conn: Any, params: dict[str, Any]) -> Any:
        if failures:
            raise failures.pop()
        return await real_claim(conn, params)

    monkeypatch.setattr(dialect, "claim", flaky)
    assert (await sql_store.claim("k", "fp", "t", lease_ms=LEASE)).acquired
    failures.extend(_db_error(_Orig("deadlock", sqlstate="40P01")) for _ in range(10))
    with pytest.raises(StoreError, match="deadlock"):
        await sql_store.claim("k2", "fp", "t", lease_ms=LEASE)


async def test_endless_race_ends_in_store_error(
    sql_store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim whose row keeps changing under it gives up with StoreError, not a loop."""

    async def always_lost(conn: Any, params: dict[str, Any]) -> tuple[bool, None]:
        return False, None

    monkeypatch.setattr(sql_store._dialect, "claim", always_lost)
    with pytest.raises(StoreError, match="kept racing"):
        await sql_store.claim("k", "fp", "t", lease_ms=LEASE)


# -- construction ---------------------------------------------------------------------------


async def test_from_url_picks_the_async_driver(tmp_path: Path) -> None:
    """A URL naming no driver gets the async one; bastion.stores.from_url builds a SQLStore."""
    store = SQLStore.from_url(f"sqlite:///{tmp_path / 'a.db'}")
    assert store.engine.dialect.driver == "aiosqlite"
    other = bastion.stores.from_url(f"sqlite+aiosqlite:///{tmp_path / 'b.db'}", table_prefix="z_")
    assert isinstance(other, bastion.stores.SQLStore)
    assert other.backend == "sql"
    assert set(other.metadata.tables) == {"z_records", "z_buckets", "z_slots"}
    for one in (store, other):
        await one.aclose()


def test_bad_construction_is_refused() -> None:
    """Engine and URL together, neither, a sync engine or an unusable URL fail at start-up."""
    engine = create_async_engine("sqlite+aiosqlite://")
    with pytest.raises(ConfigurationError):
        SQLStore(engine, url="sqlite+aiosqlite://")
    with pytest.raises(ConfigurationError):
        SQLStore()
    with pytest.raises(ConfigurationError, match="AsyncEngine"):
        SQLStore(create_engine("sqlite://"))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="engine_options"):
        SQLStore(engine, engine_options={"echo": True})
    with pytest.raises(ConfigurationError, match="not installed"):
        SQLStore(url="postgresql+psycopg://localhost/db")
    with pytest.raises(ConfigurationError):
        SQLStore(url="not a url")
    with pytest.raises(ConfigurationError, match="supports"):
        dialect_for("oracle", define_tables(MetaData()))


async def test_aclose_leaves_your_engine_open(tmp_path: Path) -> None:
    """A store given an engine does not dispose it; one built from a URL does."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'db'}")
    store = SQLStore(engine)
    await store.create_tables()
    await store.aclose()
    assert (await store.claim("k", "fp", "t", lease_ms=LEASE)).acquired
    await engine.dispose()


async def test_in_memory_sqlite_takes_turns(clock: FakeClock) -> None:
    """On an in-memory database (one shared connection) concurrent calls still have one winner."""
    store = SQLStore(url="sqlite+aiosqlite://", clock=clock)
    await store.create_tables()
    won: list[bool] = []

    async def one(i: int) -> None:
        won.append((await store.claim("hot", "fp", f"t{i}", lease_ms=LEASE)).acquired)
        await store.hit([_hit("b", limit=5)])

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, i)
    assert won.count(True) == 1
    assert not (await store.hit([_hit("b", limit=5)]))[0].allowed
    await store.aclose()


@pytest.mark.parametrize(
    "variable",
    [
        pytest.param("BASTION_TEST_POSTGRES_URL", marks=pytest.mark.postgres, id="postgres"),
        pytest.param("BASTION_TEST_MYSQL_URL", marks=pytest.mark.mysql, id="mysql"),
    ],
)
async def test_a_blocked_statement_fails_instead_of_hanging(variable: str) -> None:
    """A statement stuck behind a lock ends in StoreError after the statement timeout, so a
    hung or overloaded server cannot hold requests forever."""
    from sqlalchemy import text

    url = service_url(variable)
    timeout_arg = "command_timeout" if "asyncpg" in url else "read_timeout"
    prefix = f"h{uuid.uuid4().hex[:12]}_"
    store = SQLStore(
        url=url, table_prefix=prefix, engine_options={"connect_args": {timeout_arg: 1}}
    )
    other = SQLStore(url=url, table_prefix=prefix)
    try:
        await store.create_tables()
        await store.claim("k", "fp", "t", lease_ms=60_000)
        records = store.tables.records.name
        # a transaction the store begins (its MySQL engine's connections autocommit)
        async with other.connect_transaction() as blocker:
            await blocker.execute(text(f"SELECT * FROM {records} FOR UPDATE"))
            with anyio.fail_after(10), pytest.raises(StoreError):
                await store.complete("k", "t", b"done", ttl_ms=60_000)
    finally:
        async with other.engine.begin() as conn:
            await conn.run_sync(other.metadata.drop_all)
        await other.aclose()
        await store.aclose()


@pytest.mark.postgres
async def test_postgres_installs_a_missing_decision_function(clock: FakeClock) -> None:
    """Tables made by a migration or an older bastion lack the decision function: the first
    decision installs it and is answered, not failed."""
    from tests.stores.conftest import postgres_store

    async with postgres_store(clock) as store:
        async with store.engine.begin() as conn:
            for ddl in drop_ddl(store.tables.buckets.name.removesuffix("buckets")):
                await conn.exec_driver_sql(ddl)
        assert [d.allowed for d in await store.hit([_hit("a", limit=1)])] == [True]
        assert [d.allowed for d in await store.hit([_hit("a", limit=1)])] == [False]


@pytest.mark.postgres
async def test_postgres_claims_and_decides_in_one_statement(clock: FakeClock) -> None:
    """`claim_and_hit`: one statement whether it takes the key or finds it taken; a lapsed
    lease takes the two calls' statements."""
    from tests.stores.conftest import postgres_store

    async with postgres_store(clock) as store:
        hits = [_hit("a"), _hit("b")]
        with _statements(store) as seen:
            await store.claim_and_hit("k", "fp", "t", hits, lease_ms=LEASE)
            await store.claim_and_hit("k", "fp", "u", hits, lease_ms=LEASE)
        assert seen == ["WITH", "WITH"]
        await store.claim("gone", "fp", "t", lease_ms=1)
        clock.advance(1)
        with _statements(store) as seen:
            claim, _ = await store.claim_and_hit("gone", "fp", "u", hits, lease_ms=LEASE)
        assert claim.acquired
        assert seen == ["WITH", "WITH", "UPDATE", "SELECT"]


@pytest.mark.mysql
async def test_creating_the_tables_on_mysql_logs_no_warning(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Dropping routines that are not there yet is no news: the driver logs no warning."""
    from tests.stores.conftest import mysql_store

    with caplog.at_level(logging.WARNING, logger="asyncmy"):
        async with mysql_store(clock) as store:
            await store.ping()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("asyncmy")] == []


# -- MySQL / MariaDB: one round trip per primitive ------------------------------------------


@contextmanager
def _wire(store: SQLStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """What reaches the server: each statement, and each COMMIT or ROLLBACK the driver sends
    (including the pool's reset of a returned connection)."""
    from sqlalchemy.dialects.mysql.asyncmy import AsyncAdapt_asyncmy_connection as Adapted

    seen: list[str] = []

    def statement(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        seen.append(sql.split(None, 1)[0].upper())

    for name in ("commit", "rollback"):
        send = getattr(Adapted, name)

        def counted(self: Any, send: Any = send, name: str = name) -> Any:
            seen.append(name.upper())
            return send(self)

        monkeypatch.setattr(Adapted, name, counted)
    engine = store.engine.sync_engine
    event.listen(engine, "before_cursor_execute", statement)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", statement)
        monkeypatch.undo()


@pytest.mark.mysql
async def test_mariadb_primitives_send_one_statement_and_nothing_else(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the engine the store builds, a claim, a completion, a replay and a rate-limit
    decision each send exactly one statement: no COMMIT, no pool ROLLBACK."""
    from tests.stores.conftest import mysql_store

    async with mysql_store(clock) as store:
        calls: list[tuple[str, Any, list[str]]] = [
            ("claim", lambda: store.claim("k", "fp", "t", lease_ms=LEASE), ["INSERT"]),
            ("complete", lambda: store.complete("k", "t", b"x", ttl_ms=TTL), ["UPDATE"]),
            ("replay", lambda: store.claim("k", "fp", "u", lease_ms=LEASE), ["INSERT"]),
            ("hit", lambda: store.hit([_hit("a"), _hit("b")]), ["CALL"]),
            ("hit, denied", lambda: store.hit([_hit("a", limit=0)]), ["CALL"]),
        ]
        with _wire(store, monkeypatch) as seen:
            for name, call, expected in calls:
                seen.clear()
                await call()
                assert seen == expected, name


@pytest.mark.mysql
async def test_mariadb_transactions_still_begin_and_end(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A multi-statement operation on the autocommit engine is still one transaction:
    START TRANSACTION, its statements, COMMIT."""
    from tests.stores.conftest import mysql_store

    async with mysql_store(clock) as store:
        with _wire(store, monkeypatch) as seen:
            decisions = await store.acquire_slots([("c", 2)], "t", lease_ms=LEASE)
        assert [d.acquired for d in decisions] == [True]
        assert seen[0] == "START"
        assert seen[-1] == "COMMIT"
        assert "ROLLBACK" not in seen


@pytest.mark.mysql
async def test_mysql_claims_without_returning(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MySQL (no INSERT … RETURNING) claims with the upsert and a read back: every outcome,
    and 30 concurrent claims of one key, as on MariaDB."""
    import bastion.stores.sql._dialects as dialects
    from tests.stores.conftest import mysql_store

    monkeypatch.setattr(dialects, "_returns_upserts", lambda conn: False)
    async with mysql_store(clock) as store:
        assert (await store.claim("k", "fp", "t", lease_ms=LEASE)).acquired
        held = await store.claim("k", "fp", "u", lease_ms=LEASE)
        assert not held.acquired
        assert held.lease_remaining_ms == LEASE
        assert await store.complete("k", "t", b"done", ttl_ms=TTL)
        assert (await store.claim("k", "fp", "v", lease_ms=LEASE)).response == b"done"
        assert (await store.claim("gone", "fp", "t", lease_ms=1)).acquired
        clock.advance(0.01)
        assert (await store.claim("gone", "fp", "u", lease_ms=LEASE)).acquired
        won: list[str] = []

        async def one(i: int) -> None:
            if (await store.claim("hot", "fp", f"t{i}", lease_ms=LEASE)).acquired:
                won.append(f"t{i}")

        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(one, i)
        assert len(won) == 1


@pytest.mark.mysql
async def test_mysql_installs_a_missing_decision_procedure(clock: FakeClock) -> None:
    """Tables made by a migration or an older bastion lack the procedure: concurrent first
    decisions of two processes install it (one of them finds it already there) and all are
    answered."""
    from bastion.stores.sql._functions import mysql_drop_ddl
    from tests.stores.conftest import mysql_store

    async with mysql_store(clock) as store:
        other = SQLStore(
            url=service_url("BASTION_TEST_MYSQL_URL"),
            table_prefix=store.tables.buckets.name.removesuffix("buckets"),
            clock=clock,
        )
        try:
            async with store.engine.begin() as conn:
                for ddl in mysql_drop_ddl(store.tables.buckets.name.removesuffix("buckets")):
                    await conn.exec_driver_sql(ddl)
            allowed: list[bool] = []

            async def one(s: SQLStore) -> None:
                allowed.extend(d.allowed for d in await s.hit([_hit("a", limit=4)]))

            async with anyio.create_task_group() as tg:
                for s in (store, other, store, other):
                    tg.start_soon(one, s)
            assert allowed == [True] * 4
            assert [d.allowed for d in await other.hit([_hit("a", limit=4)])] == [False]
        finally:
            await other.aclose()


@pytest.mark.mysql
async def test_mysql_on_your_engine_decides_in_a_transaction(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine you pass keeps its own settings: the procedure runs inside the store's
    transaction there, with the same answers."""
    from tests.stores.conftest import mysql_store

    async with mysql_store(clock) as owned:
        engine = create_async_engine(service_url("BASTION_TEST_MYSQL_URL"))
        prefix = owned.tables.buckets.name.removesuffix("buckets")
        store = SQLStore(engine, table_prefix=prefix, clock=clock)
        try:
            with _wire(store, monkeypatch) as seen:
                decisions = await store.hit([_hit("a", limit=1), _hit("b", limit=5)])
            assert [d.remaining for d in decisions] == [0, 4]
            assert "CALL" in seen
            assert "COMMIT" in seen
            assert [d.allowed for d in await owned.hit([_hit("a", limit=1)])] == [False]
        finally:
            await engine.dispose()
