"""Alembic, driven from code: `migrate` upgrades, `check_migrated` refuses a stale database.

The migration scripts ship inside the package (``reference_service/migrations``), so
``bastion-service migrate`` works from an installed wheel without an ``alembic.ini``.
"""

from __future__ import annotations

from importlib.resources import files

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["NotMigrated", "alembic_config", "check_migrated", "head_revision", "migrate"]


class NotMigrated(RuntimeError):
    """The database is behind the code's migrations; the message is the one-line hint."""


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("reference_service") / "migrations"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None  # the package ships at least one revision
    return head


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` on ``engine`` (Alembic's sync API in run_sync)."""

    def upgrade(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.begin() as conn:
        await conn.run_sync(upgrade)


async def current_revision(engine: AsyncEngine) -> str | None:
    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(read)


async def check_migrated(engine: AsyncEngine) -> None:
    """Raise `NotMigrated` unless the database is at the head revision."""
    current, head = await current_revision(engine), head_revision()
    if current != head:
        where = "not migrated" if current is None else f"at revision {current}, code needs {head}"
        raise NotMigrated(f"the database is {where}: run `bastion-service migrate` first")
