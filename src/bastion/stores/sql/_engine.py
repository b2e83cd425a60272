"""The engine a `SQLStore` builds from a URL: a driver named, bounded waits, and (MySQL)
autocommit without a rollback on every checkout. An engine you pass in stays as it is."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bastion.exceptions import ConfigurationError, MissingExtraError, missing_extra

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_POOL_TIMEOUT",
    "DEFAULT_STATEMENT_TIMEOUT",
    "build_engine",
]

DEFAULT_CONNECT_TIMEOUT = 5.0
"""Tries per transaction when concurrent ones conflict (deadlock, busy SQLite), and per claim
when the row changes between its statements."""
_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "mysql": "mysql+asyncmy",
    "mariadb": "mysql+asyncmy",
}
DEFAULT_STATEMENT_TIMEOUT = 5.0
DEFAULT_POOL_TIMEOUT = 5.0
# driver: (connect timeout argument, per-statement timeout argument)
_TIMEOUT_ARGS = {
    "asyncpg": ("timeout", "command_timeout"),
    "asyncmy": ("connect_timeout", "read_timeout"),
}
_NATIVE_AUTOCOMMIT = {"mysql", "mariadb"}
"""Backends whose store-built engines keep every connection in autocommit mode."""
_DRIVER_EXTRAS = {"asyncpg": "postgres", "aiosqlite": "sqlite", "asyncmy": "mysql"}
"""The extra that installs each driver bastion is tested with."""


def _missing_driver(url: str, module: str | None) -> MissingExtraError:
    """The error for a URL whose driver is not installed, naming the extra that installs it."""
    extra = _DRIVER_EXTRAS.get(module or "")
    if extra is not None:
        return missing_extra(extra, module or "")
    scheme = url.split(":", 1)[0]
    return MissingExtraError(
        f"the driver for {scheme!r} is not installed ({module}): install it, or use a driver "
        "bastion ships an extra for: 'bastion[postgres]', 'bastion[sqlite]' or 'bastion[mysql]'",
        extra="sql",
        name=module,
    )


def build_engine(url: str, options: Mapping[str, Any] | None) -> tuple[AsyncEngine, bool]:
    """An async engine for ``url`` (a URL without a driver gets the async one we test with),
    and whether its connections are in autocommit mode from the start."""
    try:
        parsed = make_url(url)
        if "+" not in parsed.drivername and parsed.drivername in _DRIVERS:
            parsed = parsed.set(drivername=_DRIVERS[parsed.drivername])
        kwargs = dict(options or {})
        # a server that hangs must fail a request in seconds, not hold it (and a pooled
        # connection) forever: bounded connects, statements and waits for a connection
        timeout_args = _TIMEOUT_ARGS.get(parsed.get_driver_name())
        if timeout_args is not None:
            connect, statement = timeout_args
            kwargs["connect_args"] = {
                connect: DEFAULT_CONNECT_TIMEOUT,
                statement: DEFAULT_STATEMENT_TIMEOUT,
                **kwargs.get("connect_args", {}),
            }
            kwargs.setdefault("pool_timeout", DEFAULT_POOL_TIMEOUT)
        native = parsed.get_backend_name() in _NATIVE_AUTOCOMMIT and not (
            {"isolation_level", "pool_reset_on_return"} & kwargs.keys()
        )
        if native:
            # Switching a MySQL connection in and out of autocommit costs a round trip each
            # way, and the pool's ROLLBACK on return another: connections of an engine the
            # store owns stay in autocommit, and transactions are begun and ended explicitly
            kwargs.update(isolation_level="AUTOCOMMIT", pool_reset_on_return=None)
        engine = create_async_engine(parsed, **kwargs)
        if native:
            _end_only_open_transactions(engine)
        return engine, native
    except ImportError as exc:
        raise _missing_driver(url, exc.name) from exc
    except (sa_exc.ArgumentError, sa_exc.InvalidRequestError, ValueError) as exc:
        raise ConfigurationError(f"cannot build an async SQL engine from this URL: {exc}") from exc


_IN_TRANSACTION = 1
"""The server status bit MySQL sets while a transaction is open (SERVER_STATUS_IN_TRANS)."""


def _end_only_open_transactions(engine: AsyncEngine) -> None:
    """Make SQLAlchemy's COMMIT and ROLLBACK no-ops when the server reports no open
    transaction, as after an autocommit statement: SQLAlchemy ends every connection's implicit
    transaction, which costs a MySQL connection in autocommit mode a round trip for nothing.
    Only for engines the store builds (the dialect instance is the engine's own)."""
    dialect = engine.sync_engine.dialect

    def if_open(end: Callable[[Any], None]) -> Callable[[Any], None]:
        def maybe(connection: Any) -> None:
            status = getattr(connection.driver_connection, "server_status", _IN_TRANSACTION)
            if status & _IN_TRANSACTION:
                end(connection)

        return maybe

    dialect.do_commit = if_open(dialect.do_commit)  # type: ignore[method-assign,assignment]
    dialect.do_rollback = if_open(dialect.do_rollback)  # type: ignore[method-assign,assignment]
