"""An idempotent endpoint whose business row and stored response commit in one transaction.

    python examples/sql_transactional_app.py          # a demo run: the same request twice
    uvicorn examples.sql_transactional_app:app        # serve it (SQLite file ./orders.db)

Set ``DATABASE_URL`` to use another database, e.g.
``postgresql+asyncpg://postgres@127.0.0.1:5432/test`` or ``mysql+asyncmy://root@127.0.0.1/test``.
Then try it::

    curl -i -X POST localhost:8000/orders -H 'Idempotency-Key: 42' -d '{"item": "book"}'

Run it twice: one row in ``orders``, and the second answer is the first one replayed. If the
handler crashed before ``tx.complete``, neither the row nor the record would exist and the
retry would run afresh; if its lease had passed to a retry, it would commit nothing and
answer 409.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bastion import IdempotencyMiddleware, IdempotencySettings
from bastion.idempotency import transaction
from bastion.stores.sql import SQLStore, define_tables

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite+aiosqlite:///orders.db")

# Your models and bastion's tables on one MetaData: Alembic migrates them together.
metadata = MetaData()
orders = Table(
    "orders",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("item", String(100), nullable=False),
)
define_tables(metadata)

store = SQLStore(url=DATABASE_URL, metadata=metadata)


async def create_order(request: Request) -> Response:
    payload = await request.json()
    async with transaction(store, request) as tx:
        result = await tx.connection.execute(insert(orders).values(item=payload["item"]))
        order_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
        response = JSONResponse({"id": order_id, "item": payload["item"]}, status_code=201)
        # stores the response in the same transaction as the row, fenced by the lease token
        return await tx.complete(response)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with store.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)  # use Alembic in a real deployment
    yield
    await store.aclose()


app = Starlette(
    routes=[Route("/orders", create_order, methods=["POST"])],
    middleware=[
        Middleware(
            IdempotencyMiddleware,
            store=store,
            settings=IdempotencySettings(require_key=("/orders",)),
        )
    ],
    lifespan=lifespan,
)


async def demo() -> None:
    import httpx

    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            key = {"Idempotency-Key": f"demo-{os.getpid()}"}
            for attempt in ("first", "retry"):
                response = await client.post("/orders", headers=key, json={"item": "book"})
                replayed = response.headers.get("idempotent-replayed", "false")
                print(f"{attempt}: {response.status_code} {response.text} replayed={replayed}")
        async with store.engine.connect() as conn:
            count = (await conn.execute(select(func.count()).select_from(orders))).scalar_one()
        print(f"rows in orders: {count} (one per distinct key, however often it is retried)")


if __name__ == "__main__":
    asyncio.run(demo())
