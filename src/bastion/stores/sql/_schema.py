"""The tables of the SQL store, defined on a `MetaData` you can migrate with Alembic.

Times are BIGINT milliseconds from the store's clock, never database timestamps, so every
backend compares the same integers the memory and Redis stores use. Key and token columns
compare byte for byte on every dialect: PostgreSQL gets the ``C`` collation and MySQL/MariaDB
``VARBINARY``, because a case-insensitive or space-padding collation would make two distinct
keys (or a stale fencing token and the live one) compare equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import DDL, BigInteger, Column, Index, LargeBinary, MetaData, String, Table, event
from sqlalchemy.dialects import mysql
from sqlalchemy.types import TypeEngine

from bastion.exceptions import ConfigurationError
from bastion.stores.sql._functions import drop_ddl, function_ddl, mysql_ddl, mysql_drop_ddl

__all__ = ["DEFAULT_PREFIX", "KEY_BYTES", "SQLTables", "build_metadata", "define_tables"]

DEFAULT_PREFIX = "bastion_"
KEY_BYTES = 255
"""Longest key stored as is (UTF-8 bytes); longer keys are stored as a SHA-256 digest."""
TOKEN_BYTES = 96
FINGERPRINT_LENGTH = 255
_MAX_PREFIX = 40  # leaves room for "ix_<prefix>buckets_expires_at" within 63 characters
_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MYSQL = ("mysql", "mariadb")


def _exact(length: int) -> TypeEngine[str]:
    return (
        String(length)
        .with_variant(String(length, collation="C"), "postgresql")
        .with_variant(mysql.VARBINARY(length), "mysql", "mariadb")
    )


@dataclass(frozen=True, slots=True)
class SQLTables:
    """The store's tables: ``records`` (idempotency), ``buckets`` (rate limits) and ``slots``
    (concurrency limits)."""

    records: Table
    buckets: Table
    slots: Table

    def function_ddl(self, dialect: str = "postgresql") -> list[str]:
        """The statements that create the routines deciding rate limits in one round trip:
        PostgreSQL's function (``CREATE OR REPLACE``), or with ``dialect="mysql"`` MySQL's and
        MariaDB's stored procedure and its helper function (``CREATE``; error 1304 means it is
        there already). `SQLStore.create_tables` and ``metadata.create_all`` run them, and the
        store itself does on first use if they are missing; a migration that creates the
        tables may run them too (``for s in tables.function_ddl(): op.execute(s)``).
        """
        prefix = self.buckets.name.removesuffix("buckets")
        return mysql_ddl(prefix) if dialect in _MYSQL else function_ddl(prefix)


def _records(metadata: MetaData, prefix: str) -> Table:
    name = f"{prefix}records"
    return Table(
        name,
        metadata,
        Column("key", _exact(KEY_BYTES), primary_key=True),
        Column("fingerprint", String(FINGERPRINT_LENGTH), nullable=False),
        Column("token", _exact(TOKEN_BYTES), nullable=False),
        # NULL while in flight; up to 4 GiB on MySQL, where a plain BLOB stops at 64 KiB
        Column("response", LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")),
        # the lease deadline while in flight, the end of the replay TTL once complete
        Column("expires_at", BigInteger, nullable=False),
        Index(f"ix_{name}_expires_at", "expires_at"),
    )


def _buckets(metadata: MetaData, prefix: str) -> Table:
    name = f"{prefix}buckets"
    table = Table(
        name,
        metadata,
        Column("key", _exact(KEY_BYTES), primary_key=True),
        # `bastion._core.algorithms.State`, whose meaning depends on the algorithm
        Column("state_0", BigInteger, nullable=False),
        Column("state_1", BigInteger, nullable=False),
        Column("state_2", BigInteger, nullable=False),
        # a bucket whose expires_at has passed holds no state (a fresh bucket is inserted at 0)
        Column("expires_at", BigInteger, nullable=False),
        Index(f"ix_{name}_expires_at", "expires_at"),
    )
    # DDL runs its text through %-formatting; the routine bodies use mod(), never %.
    # MySQL has no CREATE OR REPLACE: a leftover routine of dropped tables goes first.
    for when, statements, dialects in (
        ("after_create", function_ddl, ("postgresql",)),
        ("before_drop", drop_ddl, ("postgresql",)),
        ("after_create", lambda p: [*_quietly(mysql_drop_ddl(p)), *mysql_ddl(p)], _MYSQL),
        ("before_drop", mysql_drop_ddl, _MYSQL),
    ):
        for statement in statements(prefix):
            for dialect in dialects:
                ddl = DDL(statement)  # type: ignore[no-untyped-call]
                event.listen(table, when, ddl.execute_if(dialect=dialect))
    return table


def _slots(metadata: MetaData, prefix: str) -> Table:
    name = f"{prefix}slots"
    return Table(
        name,
        metadata,
        # one row per holder of a concurrency slot, plus one per key with an empty token that
        # every acquisition of the key locks first, so that two never count at once
        Column("key", _exact(KEY_BYTES), primary_key=True),
        Column("token", _exact(TOKEN_BYTES), primary_key=True),
        # the holder's lease deadline; a holder past it is dead and no longer counted
        Column("expires_at", BigInteger, nullable=False),
        Index(f"ix_{name}_expires_at", "expires_at"),
    )


def check_prefix(prefix: str) -> str:
    """Refuse prefixes that would need quoting or overflow identifier limits."""
    if not _PREFIX.match(prefix) or len(prefix) > _MAX_PREFIX:
        raise ConfigurationError(
            f"table_prefix {prefix!r} must be a SQL identifier of at most {_MAX_PREFIX} "
            "letters, digits and underscores"
        )
    return prefix


def define_tables(metadata: MetaData, prefix: str = DEFAULT_PREFIX) -> SQLTables:
    """Add the store's tables to ``metadata`` (yours, for Alembic), or find them there.

    Calling it twice with the same prefix returns the tables defined the first time, so an
    application can define them in its models module and hand the same `MetaData` to
    `SQLStore`.
    """
    check_prefix(prefix)
    found = [metadata.tables.get(f"{prefix}{name}") for name in ("records", "buckets", "slots")]
    records = found[0] if found[0] is not None else _records(metadata, prefix)
    buckets = found[1] if found[1] is not None else _buckets(metadata, prefix)
    slots = found[2] if found[2] is not None else _slots(metadata, prefix)
    return SQLTables(records, buckets, slots)


def build_metadata(prefix: str = DEFAULT_PREFIX) -> MetaData:
    """A fresh `MetaData` holding only the store's tables, named ``<prefix>records``,
    ``<prefix>buckets`` and ``<prefix>slots``; pass it to Alembic's ``target_metadata``
    beside your own."""
    metadata = MetaData()
    define_tables(metadata, prefix)
    return metadata


def _quietly(statements: list[str]) -> list[str]:
    """``statements`` with MySQL's notes off (and back as they were): dropping a routine that
    is not there yet is no news, and drivers log every note as a warning."""
    return [
        "SET @bastion_sql_notes = @@session.sql_notes",
        "SET SESSION sql_notes = 0",
        *statements,
        "SET SESSION sql_notes = @bastion_sql_notes",
    ]
