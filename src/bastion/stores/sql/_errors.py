"""Mapping driver and SQLAlchemy failures to bastion's store errors.

Three outcomes: a transient conflict (deadlock, serialization failure, SQLite's busy lock)
that the store retries a few times; an unreachable or lost server (`StoreUnavailable`), which
the middleware treat as an outage; and anything else (`StoreError`). Every driver reports
these differently, so the codes are listed per driver here and nowhere else.
"""

from __future__ import annotations

import random

from sqlalchemy import exc as sa_exc

from bastion.exceptions import StoreError, StoreUnavailable

__all__ = ["CAUGHT", "backoff", "is_transient", "wrap"]

CAUGHT: tuple[type[BaseException], ...] = (sa_exc.SQLAlchemyError, OSError)
"""What a store operation catches: asyncpg raises a bare `OSError` when it cannot connect."""

# PostgreSQL SQLSTATEs: serialization_failure, deadlock_detected, lock_not_available
_PG_TRANSIENT = {"40001", "40P01", "55P03"}
# connection_exception class, admin/crash shutdown, cannot_connect_now
_PG_GONE_PREFIX = "08"
_PG_GONE = {"57P01", "57P02", "57P03"}
# MySQL/MariaDB: lock wait timeout, deadlock, "record has changed since last read" (MariaDB)
_MYSQL_TRANSIENT = {1205, 1213, 1020}
# can't connect (socket, TCP), server gone away, lost connection, unknown host, packets out of order
_MYSQL_GONE = {2002, 2003, 2005, 2006, 2013, 2055, 2014}
# SQLite: SQLITE_BUSY, SQLITE_LOCKED and their extended forms (recovery, snapshot)
_SQLITE_TRANSIENT = {5, 6, 261, 517, 262}
_SQLITE_CANTOPEN = 14


def _driver_error(exc: BaseException) -> BaseException | None:
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, BaseException) else None


def _mysql_code(orig: BaseException) -> int | None:
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def is_transient(exc: BaseException) -> bool:
    """A conflict between concurrent transactions: running the operation again may succeed."""
    orig = _driver_error(exc)
    if orig is None or getattr(exc, "connection_invalidated", False):
        return False
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate in _PG_TRANSIENT:
        return True
    if getattr(orig, "sqlite_errorcode", None) in _SQLITE_TRANSIENT:
        return True
    if "database is locked" in str(orig):
        return True
    return _mysql_code(orig) in _MYSQL_TRANSIENT


def _unreachable(exc: BaseException) -> bool:
    if isinstance(exc, OSError | sa_exc.TimeoutError):
        return True  # refused, reset or timed out connecting; or no pooled connection in time
    if getattr(exc, "connection_invalidated", False):
        return True
    orig = _driver_error(exc)
    if orig is None:
        return False
    if isinstance(orig, OSError | TimeoutError):
        return True
    sqlstate = getattr(orig, "sqlstate", None) or ""
    if sqlstate.startswith(_PG_GONE_PREFIX) or sqlstate in _PG_GONE:
        return True
    if getattr(orig, "sqlite_errorcode", None) == _SQLITE_CANTOPEN:
        return True
    return _mysql_code(orig) in _MYSQL_GONE


def wrap(exc: BaseException, operation: str) -> StoreError:
    """The bastion error for a failed operation; raise it ``from exc`` to keep the cause."""
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if _unreachable(exc):
        return StoreUnavailable(f"SQL store unreachable during {operation}: {detail}")
    return StoreError(f"SQL store failed during {operation}: {detail}")


def backoff(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): jittered, a few milliseconds."""
    return random.uniform(0.001, 0.004 * 2**attempt)
