"""What bastion's middleware add to the surface, written into ``/openapi.json``.

FastAPI documents the routes it sees; the middleware in front of them answer some requests
before any route runs (a missing ``Idempotency-Key``, a reused one, a rate limit, a store
that is down). `bastion.fastapi.document` declares those from the same settings the
middleware use; the service adds the one answer of its own that no route declares: a body
that is not JSON is a 400 problem.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from bastion import IdempotencySettings, RateLimitSettings
from bastion.fastapi import document
from reference_service.problems import PROBLEM

__all__ = ["document_middleware"]

_NOT_JSON = {
    "description": "the request body is not valid JSON",
    "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/BastionProblem"}}},
}


def document_middleware(
    app: FastAPI, idempotency: IdempotencySettings, rate_limit: RateLimitSettings
) -> None:
    """Complete ``app.openapi()`` with the key header and the middleware's own answers."""
    document(app, idempotency=idempotency, rate_limit=rate_limit)
    described: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        schema = described()
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                if isinstance(operation, dict) and "requestBody" in operation:
                    operation.setdefault("responses", {}).setdefault("400", _NOT_JSON)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
