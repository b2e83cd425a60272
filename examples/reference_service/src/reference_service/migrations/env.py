"""Alembic environment: the domain's models and bastion's tables, one `MetaData`.

`reference_service.db.migrations.migrate` passes a live connection in
``config.attributes["connection"]``; run from the ``alembic`` command line instead, this file
opens one from ``BASTION_SERVICE_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio

from alembic import context
from reference_service.db.engine import create_engine
from reference_service.db.models import Base
from reference_service.settings import ServiceSettings
from sqlalchemy.engine import Connection

target_metadata = Base.metadata


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_from_url() -> None:
    engine = create_engine(ServiceSettings.from_env().database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(run)
    finally:
        await engine.dispose()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    asyncio.run(run_from_url())
