"""``/healthz`` (the process answers) and ``/readyz`` (what it depends on answers)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends
from sqlalchemy import text
from starlette.responses import JSONResponse, Response

from reference_service.problems import problem
from reference_service.routes import service_of
from reference_service.service import ReferenceService

__all__ = ["router"]

logger = logging.getLogger("reference_service")
router = APIRouter(tags=["health"])
Service = Annotated[ReferenceService, Depends(service_of)]
CHECK_TIMEOUT = 2.0


@router.get("/healthz", summary="Liveness: the process serves requests")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: database, stores, queue and relayer reachable",
    responses={503: {"description": "problem+json naming what is down"}},
)
async def readyz(service: Service) -> Response:
    async def database() -> None:
        async with service.db.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    checks: dict[str, Callable[[], Awaitable[None]]] = {
        "database": database,
        "idempotency_store": service.idempotency_store.ping,
        "rate_limit_store": service.rate_limit_store.ping,
        "queue": service.queue.ping,
        "relayer": service.relayer.ping,
    }
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            with anyio.fail_after(CHECK_TIMEOUT):
                await check()
        except Exception as exc:
            logger.warning("readiness check %s failed: %r", name, exc)
            results[name] = f"down: {type(exc).__name__}"
        else:
            results[name] = "ok"
    details: dict[str, object] = {}
    try:
        with anyio.fail_after(CHECK_TIMEOUT):
            report = await service.last_reconciliation()
    except Exception as exc:
        report = {"error": type(exc).__name__}
    # a mismatch is an operator's problem, not a reason to take the instance out of rotation
    details["reconciliation"] = report if report is not None else "not run yet"
    down = [name for name, result in results.items() if result != "ok"]
    if down:
        return problem(
            503,
            "not-ready",
            "not ready: " + ", ".join(down) + " unreachable",
            headers={"retry-after": "5"},
            checks=results,
            details=details,
        )
    return JSONResponse({"status": "ready", "checks": results, "details": details})
