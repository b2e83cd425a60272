"""The SQL store (``pip install 'bastion[sql]'`` plus your database's async driver).

`SQLStore` keeps idempotency records and rate-limit buckets in PostgreSQL (asyncpg), SQLite
(aiosqlite) or MySQL/MariaDB (asyncmy) through SQLAlchemy 2's asyncio engine. The tables are
defined on a SQLAlchemy `MetaData`: `metadata` holds them under the default prefix for
Alembic's ``target_metadata``, `build_metadata` and `define_tables` do so for another prefix
or your own `MetaData`. `bastion.idempotency.transaction` lets a handler commit its own rows
together with its stored response in this store.
"""

from __future__ import annotations

try:
    import sqlalchemy  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    from bastion.exceptions import missing_extra

    raise missing_extra("sql", "sqlalchemy") from exc

from bastion.stores.sql._schema import DEFAULT_PREFIX, SQLTables, build_metadata, define_tables
from bastion.stores.sql._store import SQLStore

__all__ = [
    "DEFAULT_PREFIX",
    "SQLStore",
    "SQLTables",
    "build_metadata",
    "define_tables",
    "metadata",
]

metadata = build_metadata(DEFAULT_PREFIX)
"""The store's tables under the default ``bastion_`` prefix, for Alembic's target_metadata."""
