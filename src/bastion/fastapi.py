"""FastAPI: bastion's middleware in the app's OpenAPI schema, with one call.

``document(app, idempotency=..., rate_limit=...)`` takes the settings objects the middleware
are given, so ``/openapi.json``, ``/docs`` and generated clients show the ``Idempotency-Key``
header, the problem answers and the rate-limit fields on exactly the routes the middleware
cover (`bastion.openapi.describe` decides which). Nothing here imports FastAPI: any app with
FastAPI's ``openapi()`` method and ``openapi_schema`` cache works.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bastion.idempotency._settings import IdempotencySettings
from bastion.openapi import describe
from bastion.ratelimit._settings import RateLimitSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["document"]


def document(
    app: FastAPI,
    *,
    idempotency: IdempotencySettings | None = None,
    rate_limit: RateLimitSettings | None = None,
) -> None:
    """Make ``app.openapi()`` describe bastion's middleware on the routes they cover.

    The schema is still built lazily and cached by FastAPI; it is described once per build,
    so routes added after this call are covered too, and clearing ``app.openapi_schema``
    rebuilds and describes it again.
    """
    build: Callable[[], dict[str, Any]] = app.openapi
    described: list[int] = []

    def openapi() -> dict[str, Any]:
        schema = build()
        if not described or described[0] != id(schema):
            describe(schema, idempotency=idempotency, rate_limit=rate_limit)
            described[:] = [id(schema)]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
