"""`bastion.idempotency.transaction` over a `SQLStore`: a handler's rows and its stored
response commit together or not at all, driven through `IdempotencyMiddleware` on every SQL
dialect."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bastion import (
    ConfigurationError,
    IdempotencyMiddleware,
    IdempotencySettings,
    StoreError,
    StoreUnavailable,
    TransactionError,
)
from bastion.idempotency import SCOPE_KEY, IdempotencyContext, transaction
from bastion.stores import MemoryStore
from bastion.stores.sql import SQLStore
from bastion.typing import ASGIApp, Message, Receive, Scope, Send
from tests.conftest import FakeClock

pytestmark = pytest.mark.anyio

Handler = Callable[[Request], Awaitable[Response]]
KEY = {"Idempotency-Key": "order-1"}


@pytest.fixture
async def orders(sql_store: SQLStore) -> AsyncIterator[Table]:
    """A business table of its own beside the store's tables, dropped afterwards."""
    table = Table(
        f"orders_{uuid.uuid4().hex[:12]}",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("item", String(50), nullable=False),
    )
    async with sql_store.engine.begin() as conn:
        await conn.run_sync(table.create)
    yield table
    async with sql_store.engine.begin() as conn:
        await conn.run_sync(table.drop)


async def _rows(store: SQLStore, table: Table) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


def _client(
    store: Any,
    handler: Handler,
    *,
    settings: IdempotencySettings | None = None,
    inner: Callable[[ASGIApp], ASGIApp] | None = None,
) -> httpx.AsyncClient:
    app: ASGIApp = Starlette(routes=[Route("/orders", handler, methods=["POST"])])
    if inner is not None:
        app = inner(app)  # runs between the idempotency middleware and the handler
    app = IdempotencyMiddleware(app, store=store, settings=settings)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def _order_handler(store: SQLStore, orders: Table, status: int = 201) -> Handler:
    async def handler(request: Request) -> Response:
        async with transaction(store, request) as tx:
            await tx.connection.execute(insert(orders).values(item="book"))
            return await tx.complete(JSONResponse({"item": "book"}, status_code=status))

    return handler


async def test_rows_and_record_commit_together(sql_store: SQLStore, orders: Table) -> None:
    """The order row and the stored response commit at once; the retry replays, adds nothing."""
    async with _client(sql_store, _order_handler(sql_store, orders)) as client:
        first = await client.post("/orders", headers=KEY, json={"item": "book"})
        again = await client.post("/orders", headers=KEY, json={"item": "book"})
    assert first.status_code == again.status_code == 201
    assert again.content == first.content == b'{"item":"book"}'
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert {k: v for k, v in again.headers.items() if k != "idempotent-replayed"} == dict(
        first.headers
    )
    assert await _rows(sql_store, orders) == 1


async def test_plain_handler_is_stored_by_the_middleware(sql_store: SQLStore) -> None:
    """Without the helper the middleware stores the response in the SQL store as usual."""
    calls: list[int] = []

    async def handler(request: Request) -> Response:
        calls.append(1)
        return Response(b"\x00binary\xff", status_code=202, media_type="application/octet-stream")

    async with _client(sql_store, handler) as client:
        first = await client.post("/orders", headers=KEY, json={})
        again = await client.post("/orders", headers=KEY, json={})
    assert again.status_code == 202
    assert again.content == first.content == b"\x00binary\xff"
    assert again.headers["idempotent-replayed"] == "true"
    assert calls == [1]


async def test_exception_before_commit_leaves_neither(sql_store: SQLStore, orders: Table) -> None:
    """A handler that fails after writing commits no row and no record: the retry runs again."""
    calls: list[int] = []

    async def handler(request: Request) -> Response:
        async with transaction(sql_store, request) as tx:
            await tx.connection.execute(insert(orders).values(item="book"))
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("crash before commit")
            return await tx.complete(JSONResponse({"item": "book"}, status_code=201))

    async with _client(sql_store, handler) as client:
        with pytest.raises(RuntimeError, match="crash"):
            await client.post("/orders", headers=KEY, json={})
        assert await _rows(sql_store, orders) == 0
        retry = await client.post("/orders", headers=KEY, json={})
    assert retry.status_code == 201
    assert "idempotent-replayed" not in retry.headers
    assert await _rows(sql_store, orders) == 1


async def test_lost_lease_commits_neither(
    sql_store: SQLStore, orders: Table, clock: FakeClock
) -> None:
    """A holder whose lease passed to another request commits nothing and answers 409."""
    taken: list[IdempotencyContext] = []

    async def handler(request: Request) -> Response:
        context = request.scope[SCOPE_KEY]
        taken.append(context)
        clock.advance(31)  # past the 30 s lease: a retry takes the key over
        intruder = await sql_store.claim(
            context.key, context.fingerprint, "intruder", lease_ms=30_000
        )
        assert intruder.acquired
        async with transaction(sql_store, request) as tx:
            await tx.connection.execute(insert(orders).values(item="book"))
            return await tx.complete(JSONResponse({"item": "book"}, status_code=201))

    async with _client(sql_store, handler) as client:
        response = await client.post("/orders", headers=KEY, json={})
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "urn:bastion:problem:idempotency-lease-lost"
    assert await _rows(sql_store, orders) == 0
    assert not taken[0].completed
    assert await sql_store.release(taken[0].key, "intruder") is True


async def test_unstored_status_rolls_back(sql_store: SQLStore, orders: Table) -> None:
    """A 503 is not kept for replay, so its rows are rolled back and the key is released."""
    async with _client(sql_store, _order_handler(sql_store, orders, status=503)) as client:
        first = await client.post("/orders", headers=KEY, json={})
        second = await client.post("/orders", headers=KEY, json={})
    assert first.status_code == second.status_code == 503
    assert "idempotent-replayed" not in second.headers
    assert await _rows(sql_store, orders) == 0


async def test_request_without_key_is_a_plain_transaction(
    sql_store: SQLStore, orders: Table
) -> None:
    """Without an Idempotency-Key the rows still commit, with no record to write."""
    async with _client(sql_store, _order_handler(sql_store, orders)) as client:
        response = await client.post("/orders", json={})
    assert response.status_code == 201
    assert await _rows(sql_store, orders) == 1


async def test_orm_session_joins_the_transaction(sql_store: SQLStore, orders: Table) -> None:
    """An AsyncSession bound to tx.connection writes in the same transaction; its commit
    only flushes, so a failure afterwards still rolls its rows back."""

    async def handler(request: Request) -> Response:
        async with transaction(sql_store, request) as tx:
            async with AsyncSession(bind=tx.connection) as session:
                await session.execute(insert(orders).values(item="book"))
                await session.commit()
            if request.headers.get("x-fail"):
                raise RuntimeError("after the session committed")
            return await tx.complete(JSONResponse({}, status_code=201))

    async with _client(sql_store, handler) as client:
        with pytest.raises(RuntimeError):
            await client.post("/orders", headers={**KEY, "x-fail": "1"}, json={})
        assert await _rows(sql_store, orders) == 0
        assert (await client.post("/orders", headers=KEY, json={})).status_code == 201
    assert await _rows(sql_store, orders) == 1


@pytest.mark.parametrize("misuse", ["no_complete", "own_commit", "streaming", "own_rollback"])
async def test_misuse_rolls_back_and_raises(
    sql_store: SQLStore, orders: Table, misuse: str
) -> None:
    """Leaving without complete(), committing or rolling back yourself, or a streamed body
    raise TransactionError and commit nothing."""

    async def handler(request: Request) -> Response:
        async with transaction(sql_store, request) as tx:
            await tx.connection.execute(insert(orders).values(item="book"))
            if misuse == "own_commit":
                await tx.connection.commit()
            if misuse == "own_rollback":
                await tx.connection.rollback()
                await tx.connection.execute(insert(orders).values(item="book"))
            if misuse == "streaming":
                return await tx.complete(StreamingResponse(iter([b"x"])))
            if misuse == "no_complete":
                return JSONResponse({})
            return await tx.complete(JSONResponse({}, status_code=201))

    async with _client(sql_store, handler) as client:
        with pytest.raises(TransactionError):
            await client.post("/orders", headers=KEY, json={})
    assert await _rows(sql_store, orders) == 0


async def test_response_over_the_cap_is_refused(sql_store: SQLStore, orders: Table) -> None:
    """A response too large to store would break at-most-once: nothing is committed."""
    settings = IdempotencySettings(max_response_bytes=8)
    handler = _order_handler(sql_store, orders)
    async with _client(sql_store, handler, settings=settings) as client:
        with pytest.raises(TransactionError, match="max_response_bytes"):
            await client.post("/orders", headers=KEY, json={})
    assert await _rows(sql_store, orders) == 0


async def test_lease_held_by_another_store_is_refused(sql_store: SQLStore, orders: Table) -> None:
    """A middleware on another store cannot be fenced by this database: refused up front."""
    async with _client(MemoryStore(), _order_handler(sql_store, orders)) as client:
        with pytest.raises(TransactionError, match="another store"):
            await client.post("/orders", headers=KEY, json={})
    assert await _rows(sql_store, orders) == 0


async def test_transaction_object_is_single_use(sql_store: SQLStore, orders: Table) -> None:
    """The connection is unusable outside the block and complete() works once."""
    tx = transaction(sql_store, {"type": "http"})
    with pytest.raises(TransactionError):
        _ = tx.connection
    async with tx:
        await tx.connection.execute(insert(orders).values(item="book"))
        await tx.complete(Response(b"ok"))
        with pytest.raises(TransactionError):
            await tx.complete(Response(b"again"))
    with pytest.raises(TransactionError):
        async with tx:
            pass
    assert await _rows(sql_store, orders) == 1


def _add_header_after_handler(app: ASGIApp) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_more(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], (b"x-added", b"late")]
            await send(message)

        await app(scope, receive, send_more)

    return wrapped


async def test_changed_response_is_reported(
    sql_store: SQLStore, orders: Table, caplog: pytest.LogCaptureFixture
) -> None:
    """Middleware that rewrites the response after it was stored is logged; replays send the
    stored one."""
    handler = _order_handler(sql_store, orders)
    async with _client(sql_store, handler, inner=_add_header_after_handler) as client:
        with caplog.at_level(logging.WARNING, logger="bastion.idempotency"):
            first = await client.post("/orders", headers=KEY, json={})
        again = await client.post("/orders", headers=KEY, json={})
    assert first.headers["x-added"] == "late"
    assert "x-added" not in again.headers
    assert "differs from the one stored" in caplog.text


async def test_concurrent_duplicates_write_once(sql_store: SQLStore, orders: Table) -> None:
    """Ten simultaneous requests with one key insert one row; the others get 409 or a replay."""
    statuses: list[int] = []
    async with _client(sql_store, _order_handler(sql_store, orders)) as client:

        async def one() -> None:
            statuses.append((await client.post("/orders", headers=KEY, json={})).status_code)

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
    assert await _rows(sql_store, orders) == 1
    assert statuses.count(201) >= 1
    assert set(statuses) <= {201, 409}


async def test_second_transaction_after_completion_is_refused(
    sql_store: SQLStore, orders: Table
) -> None:
    """Once a response is stored, another transaction for the request is refused; the first
    commit stands and the key replays it."""

    async def handler(request: Request) -> Response:
        response = await _order_handler(sql_store, orders)(request)
        async with transaction(sql_store, request) as tx:
            return await tx.complete(response)

    async with _client(sql_store, handler) as client:
        with pytest.raises(TransactionError, match="already been stored"):
            await client.post("/orders", headers=KEY, json={})
        replay = await client.post("/orders", headers=KEY, json={})
    assert replay.headers["idempotent-replayed"] == "true"
    assert await _rows(sql_store, orders) == 1


async def test_failing_fence_statement_commits_nothing(
    sql_store: SQLStore, orders: Table, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database error while storing the response raises StoreError and commits nothing."""
    monkeypatch.setattr(sql_store._dialect, "complete", text("SELECT * FROM no_such_table"))
    async with _client(sql_store, _order_handler(sql_store, orders)) as client:
        with pytest.raises(StoreError, match="during complete"):
            await client.post("/orders", headers=KEY, json={})
    assert await _rows(sql_store, orders) == 0


async def test_unreachable_database_fails_on_entry() -> None:
    """A transaction that cannot connect raises StoreUnavailable before the handler writes."""
    store = SQLStore(url="postgresql+asyncpg://postgres@127.0.0.1:1/test")
    with pytest.raises(StoreUnavailable):
        async with transaction(store, {"type": "http"}):
            pass
    await store.aclose()


def test_transaction_needs_a_store_that_can_share_one() -> None:
    """A store without the transactional primitives is refused when the helper is built."""
    with pytest.raises(ConfigurationError, match="cannot share a transaction"):
        transaction(MemoryStore(), {"type": "http"})
