"""The conformance kit against an app of your own, in-process, on a fake clock.

    python examples/conformance_app.py      # runs every check and prints the table

Against a running deployment the same checks are one command::

    bastion check http://127.0.0.1:8000 --path /orders --body '{"item": "${nonce}"}'

``docs/conformance-kit.md`` walks through both, and the pytest plugin.
"""

from __future__ import annotations

import anyio
import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bastion import (
    IdempotencyMiddleware,
    IdempotencySettings,
    RateLimitMiddleware,
    RateLimitSettings,
    Tier,
)
from bastion.check import Report, Target, run_checks
from bastion.stores import MemoryStore
from bastion.testing import FakeClock

clock = FakeClock()
store = MemoryStore(clock=clock)


async def order(request: Request) -> JSONResponse:
    return JSONResponse({"ordered": await request.json()}, status_code=201)


app = Starlette(
    routes=[Route("/orders", order, methods=["POST"])],
    middleware=[
        Middleware(
            RateLimitMiddleware,
            store=store,
            settings=RateLimitSettings(tiers=(Tier(name="orders", limit=30, window=60),)),
        ),
        Middleware(IdempotencyMiddleware, store=store, settings=IdempotencySettings()),
    ],
)

target = Target(
    path="/orders",
    body='{"item": "${nonce}"}',  # a fresh payload per ${nonce}
    principal_a={"Authorization": "Bearer tenant-a"},
    principal_b={"Authorization": "Bearer tenant-b"},
)


async def wait(seconds: float) -> None:
    """The kit's sleep: the fake clock jumps instead of the program waiting."""
    clock.advance(seconds)


async def check() -> Report:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        return await run_checks(client, target, sleep=wait)


if __name__ == "__main__":
    report = anyio.run(check)
    print(report.table())
    raise SystemExit(0 if report.ok else 1)
