"""The statements of the SQL store's concurrency slots, built once per store.

Each acquisition first upserts its key's lock row (the row with an empty token), which takes
that row's exclusive lock on PostgreSQL and MySQL (SQLite holds its one write lock for the
whole transaction): two requests for one key never count its holders at once, and keys are
locked in sorted order, so two requests sharing keys never wait on each other in a cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, bindparam, delete, func, select, update
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from bastion.stores._protocols import SlotDecision

__all__ = ["LOCK_TOKEN", "SlotStatements"]

LOCK_TOKEN = ""
"""The token of a key's lock row; a request's token is never empty."""


class SlotStatements:
    """Acquire, renew and release for one slots table on one dialect."""

    def __init__(self, table: Table, dialect: str) -> None:
        t = table
        values: dict[str, Any] = {
            "key": bindparam("s_key"),
            "token": bindparam("s_lock"),
            "expires_at": bindparam("s_until"),
        }
        if dialect == "mysql":
            stmt = mysql.insert(t).values(values)
            self.lock: Any = stmt.on_duplicate_key_update(
                expires_at=func.greatest(t.c.expires_at, stmt.inserted.expires_at)
            )
        else:
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            ins = insert(t).values(values)
            latest = (func.greatest if dialect == "postgresql" else func.max)(
                t.c.expires_at, ins.excluded.expires_at
            )
            # an update on conflict, unlike DO NOTHING, locks the existing row
            self.lock = ins.on_conflict_do_update(
                index_elements=[t.c.key, t.c.token], set_={"expires_at": latest}
            )
        holders = (t.c.key == bindparam("s_key")) & (t.c.token != bindparam("s_lock"))
        self.drop_dead = delete(t).where(holders & (t.c.expires_at <= bindparam("s_now")))
        self.read = select(t.c.token).where(holders)
        self.add = t.insert().values(
            key=bindparam("s_key"), token=bindparam("s_token"), expires_at=bindparam("s_until")
        )
        mine = (t.c.key.in_(bindparam("s_keys", expanding=True))) & (
            t.c.token == bindparam("s_token")
        )
        self.extend = (
            update(t)
            .where(mine & (t.c.expires_at > bindparam("s_now")))
            .values(expires_at=bindparam("s_until"))
        )
        self.remove = delete(t).where(mine)

    async def acquire(
        self,
        conn: AsyncConnection,
        slots: Sequence[tuple[Any, int]],
        token: Any,
        lock: Any,
        now: int,
        until: int,
    ) -> list[SlotDecision]:
        """``slots`` as (bound key, limit); ``lock`` the bound `LOCK_TOKEN`."""
        for key in sorted({key for key, _ in slots}):
            await conn.execute(self.lock, {"s_key": key, "s_lock": lock, "s_until": until})
        found: list[tuple[int, bool]] = []
        for key, _ in slots:
            params = {"s_key": key, "s_lock": lock, "s_now": now}
            await conn.execute(self.drop_dead, params)
            tokens = [row[0] for row in await conn.execute(self.read, params)]
            found.append((len(tokens), token in tokens))
        acquired = all(
            held or count < limit for (count, held), (_, limit) in zip(found, slots, strict=True)
        )
        decisions: list[SlotDecision] = []
        for (count, held), (key, limit) in zip(found, slots, strict=True):
            if acquired:
                if held:
                    await conn.execute(
                        self.extend,
                        {"s_keys": [key], "s_token": token, "s_now": now, "s_until": until},
                    )
                else:
                    await conn.execute(self.add, {"s_key": key, "s_token": token, "s_until": until})
                    count += 1
            decisions.append(SlotDecision(acquired, limit, count))
        return decisions

    async def renew(
        self, conn: AsyncConnection, keys: Sequence[Any], token: Any, now: int, until: int
    ) -> bool:
        """Extend ``token``'s live leases on ``keys`` (bound, distinct) to ``until``; False
        when any of them was lost."""
        params = {"s_keys": keys, "s_token": token, "s_now": now, "s_until": until}
        return bool((await conn.execute(self.extend, params)).rowcount == len(keys))

    async def release(self, conn: AsyncConnection, keys: Sequence[Any], token: Any) -> None:
        """Give ``token``'s slots on ``keys`` (bound) back."""
        await conn.execute(self.remove, {"s_keys": keys, "s_token": token})
