"""The real servers `bench_stores.py` runs against: reachability, cleanup, statement log.

Everything the benchmark creates carries its run's tag, so cleaning up never touches another
run's keys or tables on the shared servers.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "create_tables",
    "delete_redis_keys",
    "drop_tables",
    "host_port",
    "log_statements",
    "reachable_redis",
    "via",
]


async def reachable_redis(url: str) -> str | None:
    """None when Redis answers, else why not."""
    try:
        from redis.asyncio import Redis
    except ImportError:
        return "redis-py is not installed"
    client = Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        await client.ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await client.aclose()
    return None


async def delete_redis_keys(url: str, tag: str) -> int:
    """Delete every key whose name contains ``tag``; the count."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    deleted = 0
    try:
        batch = [key async for key in client.scan_iter(match=f"*{tag}*", count=1000)]
        for i in range(0, len(batch), 500):
            deleted += await client.unlink(*batch[i : i + 500])
    finally:
        await client.aclose()
    return deleted


async def create_tables(url: str, table_prefix: str) -> tuple[Any, str | None]:
    """A store owning the run's tables (to drop them afterwards), or why there is none."""
    try:
        from bastion.stores.sql import SQLStore

        store = SQLStore(url=url, table_prefix=table_prefix)
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
    try:
        await asyncio.wait_for(store.create_tables(), 10)
    except Exception as exc:
        await store.aclose()
        return None, f"{type(exc).__name__}: {exc}"
    return store, None


async def drop_tables(store: Any) -> None:
    """Drop the tables of ``create_tables``'s store (its own MetaData holds nothing else)."""
    async with store.engine.begin() as conn:
        await conn.run_sync(store.metadata.drop_all)
    await store.aclose()


def log_statements(engine: Any, log: Counter[str]) -> None:
    """Name each statement, BEGIN and COMMIT the engine sends (none in autocommit mode)."""
    from sqlalchemy import event

    def autocommit(conn: Any) -> bool:
        return bool(conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT")

    @event.listens_for(engine, "before_cursor_execute")
    def statement(conn: Any, cursor: Any, sql: str, params: Any, ctx: Any, many: bool) -> None:
        table = re.search(r"(records|buckets)\b", sql)
        name = f"{sql.split(None, 1)[0].upper()} {table.group(1) if table else ''}".strip()
        log[name + (" (executemany)" if many else "")] += 1

    for name in ("begin", "commit", "rollback"):

        def transaction(conn: Any, name: str = name) -> None:
            if not autocommit(conn):
                log[name.upper()] += 1

        event.listen(engine, name, transaction)


def via(url: str, port: int) -> str:
    """``url`` pointed at a relay on 127.0.0.1:``port``, same user, database and options."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(
        parts._replace(netloc=f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}")
    )


def host_port(url: str, default: int) -> tuple[str, int]:
    """The server a URL names, for the relay to connect to."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default
