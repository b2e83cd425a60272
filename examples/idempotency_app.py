"""A payments-style Starlette API where every payment must carry an ``Idempotency-Key``.

    python examples/idempotency_app.py              # serves on http://127.0.0.1:8000
    .venv/bin/python examples/idempotency_app.py    # from a checkout, after dev.py test

Then pay, retry, and see the replay (``docs/idempotency.md`` walks through every answer):

    curl -i -X POST localhost:8000/payments -H 'Idempotency-Key: pay-1' \\
         -H 'content-type: application/json' -d '{"amount": 500, "currency": "EUR"}'
    # the same again: the same 201 and payment id, plus `idempotent-replayed: true`

``POST /payouts`` takes two seconds, long enough to send a duplicate while the first is still
running (409 with ``Retry-After``). Settings come from ``BASTION_IDEMPOTENCY_*`` variables
(``BASTION_IDEMPOTENCY_WAIT=true`` makes that duplicate wait for the replay instead), and the
store from ``STORE_URL`` (``memory://`` by default; any URL `bastion.stores.from_url`
understands, such as ``sqlite+aiosqlite:///payments.db``).
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bastion import IdempotencyMiddleware, IdempotencySettings, StoreError
from bastion.stores import IdempotencyStore, from_url

logger = logging.getLogger("idempotency_app")

PAYOUT_SECONDS = 2.0


def create_app(
    *, store: IdempotencyStore | None = None, payout_seconds: float = PAYOUT_SECONDS
) -> Starlette:
    """The API, on ``store`` or else a fresh one from ``STORE_URL`` (in memory by default)."""
    if store is None:
        store = from_url(os.environ.get("STORE_URL", "memory://"))
    payment_ids = itertools.count(1)
    runs = {"payments": 0, "payouts": 0}

    async def create_payment(request: Request) -> JSONResponse:
        """Charges once per key: a retry gets this very response back, same payment id."""
        try:
            payload = await request.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or not isinstance(payload.get("amount"), int):
            # a 4xx is stored like any answer: retrying the same bad request gets it again
            return JSONResponse(
                {"detail": "send a JSON object with an integer 'amount'"}, status_code=422
            )
        runs["payments"] += 1
        payment = {
            "id": f"pay_{next(payment_ids):04d}",
            "amount": payload["amount"],
            "currency": payload.get("currency", "EUR"),
            "status": "succeeded",
        }
        return JSONResponse(payment, status_code=201)

    async def create_payout(request: Request) -> JSONResponse:
        """A slow handler: duplicates sent meanwhile get 409 (or wait, with ``wait=True``)."""
        runs["payouts"] += 1
        await anyio.sleep(payout_seconds)
        return JSONResponse({"payout": "po_0001", "status": "sent"}, status_code=201)

    async def stats(request: Request) -> JSONResponse:
        """How often each handler really ran, however many requests were sent."""
        return JSONResponse(runs)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        create_tables = getattr(store, "create_tables", None)  # the SQL store's tables
        if create_tables is not None:
            try:
                await create_tables()
            except StoreError:
                # start anyway: keyed requests get 503 until the store is back
                logger.warning("the idempotency store is unreachable", exc_info=True)
        yield
        await store.aclose()

    settings = IdempotencySettings.from_env(require_key=("/payments", "/payouts"))
    return Starlette(
        routes=[
            Route("/payments", create_payment, methods=["POST"]),
            Route("/payouts", create_payout, methods=["POST"]),
            Route("/stats", stats),
        ],
        middleware=[Middleware(IdempotencyMiddleware, store=store, settings=settings)],
        lifespan=lifespan,
    )


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(create_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
