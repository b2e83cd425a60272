"""The reference service: a rewards-claim API on FastAPI, hardened by bastion's middleware.

The stack, outermost first:

- `bastion.MetricsMiddleware`, so it counts what the others answer themselves;
- `bastion.RateLimitMiddleware` with the original plan's presets (register 5/h per client
  address, claim 60/h per wallet, webhook 100/min per event id, health 600/min per address,
  each from its ``RL_*`` variable), outside idempotency so a 429 is never stored;
- `bastion.IdempotencyMiddleware`, keys required on every mutating ``/api`` route except the
  webhook (deduplicated by event id) and the admin routes. Its store is a
  `bastion.stores.sql.SQLStore` on the domain's own database, so the handlers commit their
  rows and the stored response in one transaction.

In embedded mode the rate limits live in a `bastion.stores.MemoryStore`, the domain and the
idempotency records in one SQLite file, and jobs in an in-process queue.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.middleware import Middleware
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from bastion import (
    IdempotencyMiddleware,
    IdempotencySettings,
    MetricsApp,
    MetricsMiddleware,
    PrometheusObserver,
    RateLimitMiddleware,
    RateLimitSettings,
    Tier,
)
from bastion.ratelimit import keys
from reference_service.db.engine import create_engine
from reference_service.db.migrations import check_migrated
from reference_service.jobs.memory import InProcessQueue
from reference_service.jobs.queue import JobQueue
from reference_service.openapi import document_middleware
from reference_service.problems import install
from reference_service.relayer import Relayer
from reference_service.routes import admin, admin_page, claims, health, v2, webhook
from reference_service.service import ReferenceService
from reference_service.settings import ServiceSettings

__all__ = ["app_from_env", "create_app", "rate_limit_tiers"]

logger = logging.getLogger("reference_service")


def _wallet(request: keys.RequestView) -> str | None:
    body = request.json
    wallet = body.get("wallet") if isinstance(body, dict) else None
    # one bucket per wallet however it is spelled (lower case or EIP-55 checksummed)
    return wallet.lower() if isinstance(wallet, str) and wallet else None


def rate_limit_tiers(environ: Mapping[str, str] | None = None) -> tuple[Tier, ...]:
    """The plan's four presets; the claim tier keys on the wallet in lower case."""
    claim_key = keys.custom(
        _wallet, name="wallet", needs_body=True, fallback=keys.query_param("wallet")
    )
    return (
        Tier.register(environ=environ),
        Tier.claim(environ=environ, key=claim_key),
        Tier.webhook(environ=environ),
        Tier.health(environ=environ),
    )


class _MetricsEndpoint:
    """``/metrics``: refresh the database- and queue-derived gauges, then expose."""

    def __init__(self, service: ReferenceService) -> None:
        self.service = service
        self.exposition = MetricsApp(registry=service.registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = self.service
        try:
            with anyio.fail_after(2.0):
                async with service.db.read() as repo:
                    await service.metrics.refresh(repo, service.queue, service.relayer)
                service.metrics.reconciled(await service.last_reconciliation())
        except Exception:  # a scrape still answers, with the last known values
            logger.warning("refreshing the domain metrics failed", exc_info=True)
        await self.exposition(scope, receive, send)


def create_app(
    settings: ServiceSettings | None = None,
    *,
    registry: CollectorRegistry | None = None,
    clock: Any = time.time,
    queue: JobQueue | None = None,
    relayer: Relayer | None = None,
    run_jobs: bool = True,
    environ: Mapping[str, str] | None = None,
) -> FastAPI:
    """Build the service. Its lifespan refuses an unmigrated database.

    ``run_jobs=False`` leaves the in-process queue to the caller (tests `drain` it);
    ``clock`` drives the domain's timestamps and the queue's backoff.
    """
    settings = settings or ServiceSettings.from_env(environ)
    registry = registry if registry is not None else CollectorRegistry()
    service = ReferenceService(
        settings,
        engine=create_engine(settings.database_url),
        registry=registry,
        clock=clock,
        queue=queue,
        relayer=relayer,
    )
    observer = PrometheusObserver(registry=registry)
    idempotency = IdempotencySettings.from_env(
        environ,
        require_key=("/api/*",),
        exclude=("/api/commerce/webhook", "/api/admin/*"),
    )
    tiers = rate_limit_tiers(environ)
    rate_limits = RateLimitSettings.from_env(environ, tiers=tiers)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await check_migrated(service.db.engine)
            await service.seed_programs()
            async with anyio.create_task_group() as tg:
                if run_jobs and isinstance(service.queue, InProcessQueue):
                    await tg.start(service.queue.run)
                    tg.start_soon(service.reconcile_loop)
                yield
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await service.aclose()

    app = FastAPI(
        title="bastion reference service",
        version="0.1.0",
        summary="A rewards-claim API hardened by bastion's idempotency, rate limits and metrics.",
        lifespan=lifespan,
        middleware=[
            Middleware(MetricsMiddleware, registry=registry),
            Middleware(
                RateLimitMiddleware,
                store=service.rate_limit_store,
                settings=rate_limits,
                observer=observer,
            ),
            Middleware(
                IdempotencyMiddleware,
                store=service.idempotency_store,
                settings=idempotency,
                observer=observer,
            ),
        ],
    )
    app.state.service = service
    install(app)
    for module in (claims, v2, webhook, admin, admin_page, health):
        app.include_router(module.router)
    app.router.routes.append(Route("/metrics", _MetricsEndpoint(service), methods=["GET", "HEAD"]))
    document_middleware(app, idempotency, rate_limits)
    return app


def app_from_env() -> FastAPI:
    """The app from the environment: uvicorn's factory for ``serve --workers N``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return create_app()
