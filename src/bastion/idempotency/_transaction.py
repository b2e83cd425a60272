"""`transaction(store, request)`: a handler's own writes and its stored response, in one commit.

With every other store, a handler commits its business rows and the middleware then stores
the response in a second write: a crash between the two leaves rows without a record, and
the retry runs the request again. Here the response is written by the same transaction as
the rows, fenced by the lease token, so both commit or neither does, and a holder that lost
its lease to a retry commits nothing.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self

import anyio
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncTransaction
from starlette.responses import Response

from bastion._asgi import PROBLEM_CONTENT_TYPE, problem_json
from bastion._core.records import encode_response
from bastion.exceptions import ConfigurationError, StoreError, TransactionError
from bastion.idempotency._context import SCOPE_KEY, IdempotencyContext
from bastion.idempotency._settings import IdempotencySettings
from bastion.stores._protocols import TransactionalIdempotencyStore
from bastion.stores.sql._errors import CAUGHT, wrap
from bastion.typing import Scope

__all__ = ["IdempotentTransaction", "transaction"]

logger = logging.getLogger("bastion.stores.sql")

_DEFAULT_SETTINGS = IdempotencySettings()


def _lease_lost() -> Response:
    body = problem_json(
        409,
        "idempotency-lease-lost",
        "Request superseded",
        "Another request with this Idempotency-Key took over before this one finished, so "
        "nothing was committed; retry to get that request's outcome.",
    )
    return Response(
        body,
        status_code=409,
        media_type=PROBLEM_CONTENT_TYPE.decode(),
        headers={"retry-after": "1"},
    )


class IdempotentTransaction:
    """One database transaction for a handler's writes and its idempotent response.

    Use it as ``async with transaction(store, request) as tx:``, write with
    ``tx.connection``, and leave with ``return await tx.complete(response)``:

    - the response is stored in the idempotency record by the same transaction, fenced by
      the request's lease token, and both commit together;
    - if the lease passed to another request meanwhile, everything is rolled back and
      ``complete`` returns a 409 problem response instead;
    - a response the middleware would not keep (5xx, 408, 429 by default) rolls everything
      back, so the retry it invites starts clean;
    - an exception in the block rolls everything back and propagates;
    - leaving the block without ``complete``, or committing ``tx.connection`` yourself,
      rolls back and raises `TransactionError`.

    A request without an idempotency key (or outside the middleware) gets the same
    transaction with no record to write.
    """

    def __init__(self, store: TransactionalIdempotencyStore, scope: Scope) -> None:
        if not isinstance(store, TransactionalIdempotencyStore):
            raise ConfigurationError(
                f"{type(store).__name__} cannot share a transaction with the handler; "
                "use a store that can (SQLStore)"
            )
        self._store = store
        context = scope.get(SCOPE_KEY)
        self._context: IdempotencyContext | None = (
            context if isinstance(context, IdempotencyContext) else None
        )
        self._stack = AsyncExitStack()
        self._conn: AsyncConnection | None = None
        self._transaction: AsyncTransaction | None = None
        self._guarded: Connection | None = None
        self._state = "new"  # new -> open -> done

    @property
    def connection(self) -> AsyncConnection:
        """The connection to write your rows with; do not commit or roll it back yourself."""
        if self._state != "open" or self._conn is None:
            raise TransactionError(
                "tx.connection is only usable inside the `async with` block, before complete()"
            )
        return self._conn

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise TransactionError("a store transaction can be entered only once")
        context = self._context
        if context is not None:
            if context.completed:
                raise TransactionError("this request's response has already been stored")
            if context.store is not None and context.store is not self._store:
                raise TransactionError(
                    "the IdempotencyMiddleware in front of this request uses another store; "
                    "give it this store so the lease and the transaction share a database"
                )
        conn: AsyncConnection = await self._stack.enter_async_context(
            self._store.connect_transaction()
        )
        self._conn = conn
        self._transaction = conn.get_transaction()
        self._guarded = conn.sync_connection
        event.listen(self._guarded, "commit", _refuse_commit)
        self._state = "open"
        return self

    async def complete(self, response: Response) -> Response:
        """Store ``response`` for replay and commit everything; return what to send.

        That is ``response`` itself once committed, or a 409 problem response when the lease
        was lost and nothing was committed. Raises `StoreError` when the database fails (then
        nothing is known to be committed, and the middleware releases or replays as usual).
        """
        conn = self.connection
        if self._transaction is None or not self._transaction.is_active:
            await self._end(commit=False)
            raise TransactionError(
                "tx.connection was committed or rolled back outside tx.complete(); the "
                "transaction was rolled back"
            )
        body = getattr(response, "body", None)
        if not isinstance(body, bytes | memoryview):
            await self._end(commit=False)
            raise TransactionError(
                "tx.complete() needs a response with its whole body (Response, JSONResponse, "
                "…); a StreamingResponse or FileResponse cannot be stored in a transaction"
            )
        body = bytes(body)
        context = self._context
        settings = context.settings if context is not None else _DEFAULT_SETTINGS
        if not settings.keeps(response.status_code):
            await self._end(commit=False)
            return response
        if context is None:
            await self._end(commit=True)
            return response
        if len(body) > settings.max_response_bytes:
            await self._end(commit=False)
            raise TransactionError(
                f"the response body has {len(body)} bytes, over max_response_bytes "
                f"({settings.max_response_bytes}), so it cannot be stored for replay; nothing "
                "was committed. Raise the limit or send a smaller body."
            )
        data = encode_response(
            response.status_code, response.raw_headers, body, trace=context.trace
        )
        if not await self._fence(conn, context, data, settings):
            await self._end(commit=False)
            return _lease_lost()
        await self._end(commit=True)
        context.completed = True
        context.response = data
        return response

    async def _fence(
        self,
        conn: AsyncConnection,
        context: IdempotencyContext,
        data: bytes,
        settings: IdempotencySettings,
    ) -> bool:
        ttl_ms = int(settings.ttl_seconds * 1000)
        try:
            return await self._store.complete_in(
                conn, context.key, context.token, data, ttl_ms=ttl_ms
            )
        except StoreError:
            await self._end(commit=False, quiet=True)
            raise

    async def _end(self, *, commit: bool, quiet: bool = False) -> None:
        """Commit or roll back, then give the connection back; runs once."""
        if self._state == "done":
            return
        self._state = "done"
        with anyio.CancelScope(shield=True):
            try:
                if self._guarded is not None:
                    event.remove(self._guarded, "commit", _refuse_commit)
                transaction, conn = self._transaction, self._conn
                if transaction is not None and commit:
                    await transaction.commit()
                elif transaction is not None and transaction.is_active:
                    await transaction.rollback()
                elif conn is not None:
                    # the handler ended our transaction itself (a refused commit leaves the
                    # driver's transaction open while SQLAlchemy considers it over): close the
                    # driver connection, which discards whatever it still holds
                    await conn.invalidate()
            except CAUGHT as exc:
                if not quiet:
                    raise wrap(exc, "commit" if commit else "rollback") from exc
                logger.debug("rollback after a failure failed too", exc_info=True)
            finally:
                await self._stack.aclose()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state == "done":
            return
        await self._end(commit=False, quiet=exc is not None)
        if exc is None:
            raise TransactionError(
                "the store transaction ended without `return await tx.complete(response)`; "
                "it was rolled back"
            )


def _refuse_commit(conn: Connection) -> None:
    raise TransactionError(
        "do not commit tx.connection yourself: `await tx.complete(response)` commits your "
        "rows together with the stored response"
    )


def transaction(store: TransactionalIdempotencyStore, request: Any) -> IdempotentTransaction:
    """A transaction for a handler's own writes that also stores its response.

    ``async with transaction(store, request) as tx:`` gives ``tx.connection``; write your rows
    with it and finish with ``return await tx.complete(response)``. The business rows and the
    idempotency record commit together or not at all. ``store`` is the one the
    `IdempotencyMiddleware` in front of the handler uses (a `SQLStore`); ``request`` is a
    Starlette `Request` or an ASGI scope.
    """
    scope: Scope = getattr(request, "scope", request)
    return IdempotentTransaction(store, scope)
