"""The statements each dialect runs for the store's primitives, built once per store.

PostgreSQL and SQLite share ``INSERT … ON CONFLICT … RETURNING``; MySQL and MariaDB have no
``ON CONFLICT``, so they use ``ON DUPLICATE KEY UPDATE``, with ``RETURNING`` on MariaDB 10.5+
and a read back of the row on MySQL. PostgreSQL and MySQL/MariaDB decide rate limits in a
routine of their own (`_functions`), SQLite in Python. Statements are built with bind
parameters once, so SQLAlchemy compiles each of them a single time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

from sqlalchemy import (
    BigInteger,
    Delete,
    Executable,
    Integer,
    bindparam,
    case,
    delete,
    exists,
    func,
    literal,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from bastion.exceptions import ConfigurationError
from bastion.stores._protocols import RateLimitHit
from bastion.stores.sql._functions import CLOCK_MS, function_name
from bastion.stores.sql._schema import KEY_BYTES, TOKEN_BYTES, SQLTables

__all__ = ["Dialect", "dialect_for"]

T = TypeVar("T")
Row = tuple[Any, ...]
"""A row as plain values, in the order of the statement that read it."""
Decided = tuple[bool, int, int, int]
"""A tier decided in the database: allowed, remaining, reset ms, retry-after ms."""
ALGORITHM_CODES = {"fixed_window": "f", "sliding_window": "s", "gcra": "g"}
"""How the decision routines name the algorithms."""
_DECIDE_ARGUMENTS = ("p_keys", "p_algorithms", "p_limits", "p_windows", "p_costs", "p_now")
_DECIDED = ("allowed", "remaining", "reset_ms", "retry_after_ms")
_PG_UNDEFINED_FUNCTION = "42883"
_MYSQL_NO_ROUTINE = 1305
_MYSQL_ROUTINE_EXISTS = 1304


def decide_arguments(hits: Sequence[RateLimitHit], keys: Sequence[Any]) -> dict[str, Any]:
    """The decision routines' arguments for ``hits`` (their keys' bound values ``keys``),
    but the time."""
    return {
        "p_keys": list(keys),
        "p_algorithms": [ALGORITHM_CODES[one.algorithm] for one in hits],
        "p_limits": [one.limit for one in hits],
        "p_windows": [one.window_ms for one in hits],
        "p_costs": [one.cost for one in hits],
    }


class Dialect:
    """What differs between databases; the defaults are PostgreSQL's and SQLite's."""

    name = "generic"
    binary_keys = False
    autocommit = False
    """Run single statements outside a transaction (saves a BEGIN and a COMMIT round trip)."""
    decides_in_database = False
    """Whether one statement decides every tier in the database (PostgreSQL's function,
    MySQL's procedure): otherwise the store locks the buckets, decides in Python and writes
    them in a transaction."""
    joins_claims = False
    """Whether one statement claims a key and decides the tiers (`claim_and_decide`)."""

    def __init__(self, tables: SQLTables) -> None:
        self.tables = tables
        r = tables.records
        held = (
            (r.c.key == bindparam("p_key"))
            & (r.c.token == bindparam("p_token"))
            & r.c.response.is_(None)
            & (r.c.expires_at > bindparam("p_now"))
        )
        # never shorten a lease: a caller whose clock is behind must not bring it forward
        self.renew = (
            update(r)
            .where(held)
            .values(
                expires_at=case(
                    (r.c.expires_at > bindparam("p_until"), r.c.expires_at),
                    else_=bindparam("p_until"),
                )
            )
        )
        self.complete = (
            update(r)
            .where(held)
            .values(response=bindparam("p_response"), expires_at=bindparam("p_until"))
        )
        self.release = delete(r).where(held)
        self.take_over = (
            update(r)
            .where((r.c.key == bindparam("p_key")) & (r.c.expires_at <= bindparam("p_now")))
            .values(
                fingerprint=bindparam("p_fingerprint"),
                token=bindparam("p_token"),
                response=None,
                expires_at=bindparam("p_until"),
            )
        )
        self.read_record = select(r.c.token, r.c.fingerprint, r.c.response, r.c.expires_at).where(
            r.c.key == bindparam("p_key")
        )
        b = tables.buckets
        self.write_bucket = (
            update(b)
            .where(b.c.key == bindparam("b_key"))
            .values(
                state_0=bindparam("b_0"),
                state_1=bindparam("b_1"),
                state_2=bindparam("b_2"),
                expires_at=bindparam("b_until"),
            )
        )
        self.claim_stmt = self._claim()

    # -- values ---------------------------------------------------------------------------

    def _bounded(self, value: str, limit: int) -> str | bytes:
        raw = value.encode()
        if len(raw) > limit:
            # equality is all the store needs, and a digest keeps it within the column
            raw = b"~" + hashlib.sha256(raw).hexdigest().encode()
        return raw if self.binary_keys else raw.decode()

    def key(self, key: str) -> str | bytes:
        """The bound value for a key column."""
        return self._bounded(key, KEY_BYTES)

    def token(self, token: str) -> str | bytes:
        """The bound value for a token column."""
        return self._bounded(token, TOKEN_BYTES)

    # -- statements -----------------------------------------------------------------------

    async def claim_and_decide(
        self, conn: AsyncConnection, params: dict[str, Any]
    ) -> tuple[bool, Row | None, list[Decided]]:
        """`claim`'s first statement and, when it took the key, `decide` (``params``: both
        statements', the decision's time as ``p_decide_now``), in one statement; only where
        `joins_claims`. The row read when the key was not taken, as `claim`'s."""
        raise NotImplementedError

    async def begin(self, conn: AsyncConnection) -> None:
        """Called first in every store transaction (SQLite takes its write lock here)."""

    def _claim(self) -> Executable:
        r = self.tables.records
        insert = postgresql.insert if self.name == "postgresql" else sqlite.insert
        # DO NOTHING rather than a conditional DO UPDATE: on PostgreSQL the latter locks the
        # existing row, which writes to its page and makes every replay wait for a WAL flush
        return (
            insert(r)
            .values(
                key=bindparam("p_key"),
                fingerprint=bindparam("p_fingerprint"),
                token=bindparam("p_token"),
                response=None,
                expires_at=bindparam("p_until"),
            )
            .on_conflict_do_nothing(index_elements=[r.c.key])
            .returning(r.c.key)
        )

    async def claim(self, conn: AsyncConnection, params: dict[str, Any]) -> tuple[bool, Row | None]:
        """Insert the record, or take it over if it ran out: (True, None) when acquired, else
        (False, the row holding the key: token, fingerprint, response, expires_at), or
        (False, None) when another writer changed it between our statements (run again)."""
        if (await conn.execute(self.claim_stmt, params)).first() is not None:
            return True, None
        row = (await conn.execute(self.read_record, {"p_key": params["p_key"]})).first()
        if row is None:
            return False, None
        if row[3] > params["p_now"]:
            return False, tuple(row)
        # expired record or lapsed lease: the conditional UPDATE lets exactly one taker win
        taken = await conn.execute(self.take_over, params)
        return (True, None) if taken.rowcount == 1 else (False, None)

    async def lock_buckets(
        self, conn: AsyncConnection, keys: Sequence[str | bytes]
    ) -> tuple[dict[Any, Row], int]:
        """Create missing buckets and lock all of them, in ``keys`` order (sorted by the
        caller, so two requests sharing buckets never wait on each other in a cycle): their
        rows by key, and the database's clock (ms) read once they are locked. Only where the
        store decides in Python (not `decides_in_database`)."""
        raise NotImplementedError

    async def decide(
        self,
        conn: AsyncConnection,
        hits: Sequence[RateLimitHit],
        keys: Sequence[Any],
        now: int | None,
    ) -> list[Decided]:
        """Every tier decided (and written when all allow) by one statement in the database:
        (allowed, remaining, reset ms, retry-after ms) per hit; only if `decides_in_database`."""
        raise NotImplementedError

    def missing_routine(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the database lacks the decision routine (not yet installed)."""
        return False

    async def install(self, conn: AsyncConnection) -> None:
        """Create this version's decision routine; safe when another process just did."""
        for ddl in self.tables.function_ddl(self.name):
            await conn.exec_driver_sql(ddl)

    async def installing(
        self, conn: AsyncConnection, statement: Callable[..., Awaitable[T]], *args: Any
    ) -> T:
        """``statement(*args)``, after installing this version's routines if they are missing
        (tables made by a migration, or by an older bastion)."""
        try:
            return await statement(*args)
        except sa_exc.DBAPIError as exc:
            if not self.missing_routine(exc):
                raise
            await self.install(conn)
            return await statement(*args)

    def cleanup(self, table_name: str, now: int, batch: int) -> Delete:
        """Delete up to ``batch`` rows of the table that expired at ``now``."""
        table = getattr(self.tables, table_name)
        expired = table.c.expires_at <= now
        victims = select(table.c.key).where(expired).limit(batch)
        # the outer condition is re-checked on the latest row version, so a record taken over
        # between the subquery and the delete is kept
        return delete(table).where(table.c.key.in_(victims)).where(expired)


_SQLITE_MS = literal_column(CLOCK_MS["sqlite"], BigInteger)


def _fresh_bucket(i: int) -> dict[str, Any]:
    # expires_at 0: already expired, so it reads as "no state" until a decision is written
    return {"key": bindparam(f"k{i}"), "state_0": 0, "state_1": 0, "state_2": 0, "expires_at": 0}


class PostgreSQL(Dialect):
    name = "postgresql"
    autocommit = True
    decides_in_database = True
    joins_claims = True

    def __init__(self, tables: SQLTables) -> None:
        super().__init__(tables)
        function = function_name(tables.buckets.name.removesuffix("buckets"))
        self._decide = text(
            f"SELECT allowed, remaining, reset_ms, retry_after_ms FROM {function}"
            "(:p_keys, :p_algorithms, :p_limits, :p_windows, :p_costs, :p_now)"
        )
        r = tables.records
        # One round trip: the insert, and the row it ran into. The main query cannot see a
        # row the CTE inserted, and may miss one committed after its snapshot began: both
        # read as NULL, told apart by `acquired`; the second makes the caller claim again.
        inserted = cast(postgresql.Insert, self.claim_stmt).cte("claimed")
        acquired = select(func.count()).select_from(inserted).scalar_subquery()
        anchor = select(literal(1).label("one")).subquery("anchor")
        self._claim_or_read = select(
            acquired, r.c.token, r.c.fingerprint, r.c.response, r.c.expires_at
        ).select_from(anchor.outerjoin(r, r.c.key == bindparam("p_key")))
        # the same, and the function's decisions only when the insert took the key (a
        # one-time filter: the function does not run otherwise), as one array per tier
        decided = (
            getattr(func, function)(
                *(bindparam(name) for name in _DECIDE_ARGUMENTS[:-1]), bindparam("p_decide_now")
            )
            .table_valued("allowed", "remaining", "reset_ms", "retry_after_ms", with_ordinality="n")
            .render_derived(name="d")
        )
        rows = postgresql.array(
            [decided.c.allowed.cast(Integer), *(decided.c[c] for c in _DECIDED[1:])]
        )
        decisions = (
            select(func.array_agg(postgresql.aggregate_order_by(rows, decided.c.n)))
            .select_from(decided)
            .where(exists(select(literal(1)).select_from(inserted)))
            .scalar_subquery()
        )
        self._claim_and_decide = self._claim_or_read.add_columns(decisions)

    async def claim(self, conn: AsyncConnection, params: dict[str, Any]) -> tuple[bool, Row | None]:
        acquired, *row = (await conn.execute(self._claim_or_read, params)).one()
        if acquired:
            return True, None
        if row[0] is None:
            return False, None
        if row[3] > params["p_now"]:
            return False, tuple(row)
        taken = await conn.execute(self.take_over, params)
        return (True, None) if taken.rowcount == 1 else (False, None)

    async def decide(
        self,
        conn: AsyncConnection,
        hits: Sequence[RateLimitHit],
        keys: Sequence[Any],
        now: int | None,
    ) -> list[Decided]:
        params = decide_arguments(hits, keys)
        params["p_now"] = now
        rows = (await conn.execute(self._decide, params)).all()
        return [(bool(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows]

    async def claim_and_decide(
        self, conn: AsyncConnection, params: dict[str, Any]
    ) -> tuple[bool, Row | None, list[Decided]]:
        acquired, *row, decided = (await conn.execute(self._claim_and_decide, params)).one()
        if not acquired:
            return False, (None if row[0] is None else tuple(row)), []
        return True, None, [(bool(a), int(b), int(c), int(d)) for a, b, c, d in decided or ()]

    def missing_routine(self, exc: BaseException) -> bool:
        return getattr(getattr(exc, "orig", None), "sqlstate", None) == _PG_UNDEFINED_FUNCTION


class SQLite(Dialect):
    name = "sqlite"

    def _claim(self) -> Executable:
        r = self.tables.records
        stmt = sqlite.insert(r).values(
            key=bindparam("p_key"),
            fingerprint=bindparam("p_fingerprint"),
            token=bindparam("p_token"),
            response=None,
            expires_at=bindparam("p_until"),
        )
        free = r.c.expires_at <= bindparam("p_now")
        # a conditional update that leaves a live row as it is still returns it: a claim, a
        # replay, an in-flight key and a takeover are one statement (SQLite 3.35+)
        return stmt.on_conflict_do_update(
            index_elements=[r.c.key],
            set_={
                "fingerprint": case((free, stmt.excluded.fingerprint), else_=r.c.fingerprint),
                "token": case((free, stmt.excluded.token), else_=r.c.token),
                "response": case((free, None), else_=r.c.response),
                "expires_at": case((free, stmt.excluded.expires_at), else_=r.c.expires_at),
            },
        ).returning(r.c.token, r.c.fingerprint, r.c.response, r.c.expires_at)

    async def claim(self, conn: AsyncConnection, params: dict[str, Any]) -> tuple[bool, Row | None]:
        # the token tells whether the upsert inserted or took over the row (tokens are unique)
        held = (await conn.execute(self.claim_stmt, params)).one()
        return (True, None) if held[0] == params["p_token"] else (False, tuple(held))

    def __init__(self, tables: SQLTables) -> None:
        super().__init__(tables)
        self._lock_statements: dict[int, Executable] = {}

    def _lock_stmt(self, count: int) -> Executable:
        b = self.tables.buckets
        stmt = sqlite.insert(b).values([_fresh_bucket(i) for i in range(count)])
        # a no-op update on conflict still locks the row (the transaction holds the write
        # lock already), and RETURNING hands back its state and SQLite's clock, in ms
        return stmt.on_conflict_do_update(
            index_elements=[b.c.key], set_={"state_0": b.c.state_0}
        ).returning(b.c.key, b.c.state_0, b.c.state_1, b.c.state_2, b.c.expires_at, _SQLITE_MS)

    async def lock_buckets(
        self, conn: AsyncConnection, keys: Sequence[str | bytes]
    ) -> tuple[dict[Any, Row], int]:
        stmt = self._lock_statements.get(len(keys))
        if stmt is None:
            stmt = self._lock_statements[len(keys)] = self._lock_stmt(len(keys))
        result = await conn.execute(stmt, {f"k{i}": key for i, key in enumerate(keys)})
        rows = result.all()
        return {row[0]: tuple(row[1:5]) for row in rows}, int(rows[0][5])

    async def begin(self, conn: AsyncConnection) -> None:
        # SQLite has one writer at a time: take the write lock up front, so a transaction
        # never reads, then fails to upgrade with "database is locked" half way through. The
        # sqlite3 driver has not begun a transaction unless the application made it do so.
        raw = await conn.get_raw_connection()
        if not getattr(raw.driver_connection, "in_transaction", True):
            await conn.exec_driver_sql("BEGIN IMMEDIATE")


class MySQL(Dialect):
    name = "mysql"
    binary_keys = True
    decides_in_database = True

    def __init__(self, tables: SQLTables) -> None:
        super().__init__(tables)
        procedure = function_name(tables.buckets.name.removesuffix("buckets"))
        self._decide = text(f"CALL {procedure}(:p_hits, :p_keys, :p_now)")
        r = tables.records
        # MariaDB 10.5+ returns the row an upsert met or made: a claim in one statement
        self._claim_returning = cast(mysql.Insert, self.claim_stmt).returning(
            r.c.token, r.c.fingerprint, r.c.response, r.c.expires_at
        )
        self._read_locked = self.read_record.with_for_update()

    def _claim(self) -> Executable:
        r = self.tables.records
        stmt = mysql.insert(r).values(
            key=bindparam("p_key"),
            fingerprint=bindparam("p_fingerprint"),
            token=bindparam("p_token"),
            response=None,
            expires_at=bindparam("p_until"),
        )
        free = r.c.expires_at <= bindparam("p_now")
        # MySQL applies these in order and later ones see earlier results: expires_at, which
        # the condition reads, must be assigned last
        return stmt.on_duplicate_key_update(
            [
                ("fingerprint", case((free, stmt.inserted.fingerprint), else_=r.c.fingerprint)),
                ("token", case((free, stmt.inserted.token), else_=r.c.token)),
                ("response", case((free, None), else_=r.c.response)),
                ("expires_at", case((free, stmt.inserted.expires_at), else_=r.c.expires_at)),
            ]
        )

    async def claim(self, conn: AsyncConnection, params: dict[str, Any]) -> tuple[bool, Row | None]:
        # the token tells whether the upsert inserted or took over the row (tokens are unique)
        if _returns_upserts(conn):
            held = (await conn.execute(self._claim_returning, params)).one()
            return (True, None) if held[0] == params["p_token"] else (False, tuple(held))
        # the affected-row count cannot tell an insert from an untouched duplicate (SQLAlchemy
        # sets CLIENT_FOUND_ROWS), so read the row back: locked by the upsert in a
        # transaction; in autocommit mode a later committed state, which the store re-checks
        await conn.execute(self.claim_stmt, params)
        row = (await conn.execute(self._read_locked, {"p_key": params["p_key"]})).first()
        if row is None:
            return False, None
        return (True, None) if row[0] == params["p_token"] else (False, tuple(row))

    async def decide(
        self,
        conn: AsyncConnection,
        hits: Sequence[RateLimitHit],
        keys: Sequence[Any],
        now: int | None,
    ) -> list[Decided]:
        tiers = [
            [key.hex(), ALGORITHM_CODES[one.algorithm], one.limit, one.window_ms, one.cost]
            for one, key in zip(hits, keys, strict=True)
        ]
        params = {
            "p_hits": json.dumps(tiers),
            "p_keys": json.dumps(sorted({key.hex() for key in keys})),
            "p_now": now,
        }
        decided = json.loads((await conn.execute(self._decide, params)).scalar_one())
        return [(bool(ok), rem, reset, retry) for ok, rem, reset, retry in decided]

    def missing_routine(self, exc: BaseException) -> bool:
        orig = getattr(exc, "orig", None)
        return bool(getattr(orig, "args", (None,))[:1] == (_MYSQL_NO_ROUTINE,))

    async def install(self, conn: AsyncConnection) -> None:
        for ddl in self.tables.function_ddl(self.name):
            try:
                await conn.exec_driver_sql(ddl)
            except sa_exc.DBAPIError as exc:
                # another process installed it first: a version's body never changes
                if getattr(exc.orig, "args", (None,))[:1] != (_MYSQL_ROUTINE_EXISTS,):
                    raise

    def cleanup(self, table_name: str, now: int, batch: int) -> Delete:
        # MySQL refuses a subquery on the table being deleted from, but has DELETE … LIMIT
        table = getattr(self.tables, table_name)
        return (
            delete(table).where(table.c.expires_at <= now).with_dialect_options(mysql_limit=batch)
        )


def _returns_upserts(conn: AsyncConnection) -> bool:
    dialect = conn.dialect
    version = getattr(dialect, "server_version_info", None) or ()
    return bool(getattr(dialect, "is_mariadb", False)) and tuple(version) >= (10, 5)


PING = text("SELECT 1")

_DIALECTS: dict[str, type[Dialect]] = {
    "postgresql": PostgreSQL,
    "sqlite": SQLite,
    "mysql": MySQL,
    "mariadb": MySQL,
}


def dialect_for(name: str, tables: SQLTables) -> Dialect:
    """The statements for a SQLAlchemy dialect name, or `ConfigurationError`."""
    try:
        return _DIALECTS[name](tables)
    except KeyError:
        raise ConfigurationError(
            f"the SQL store supports PostgreSQL, SQLite and MySQL/MariaDB, not {name!r}"
        ) from None
