"""What bastion's middleware adds to the surface, written into ``/openapi.json``.

FastAPI documents the routes it sees; the middleware in front of them answers some requests
before any route runs (a missing ``Idempotency-Key``, a reused one, a rate limit, a store
that is down). A client generated from the document, or a fuzzer checking answers against
it, must see those answers declared, so the document is completed here from the same
settings the middleware use.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI

from bastion import IdempotencySettings, Tier
from reference_service.problems import PROBLEM

__all__ = ["document_middleware"]

_KEY_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": 255,
    # printable ASCII, no surrounding blanks; quotes and backslashes left out because a
    # quoted key ("abc") is unquoted as a structured-field string first
    "pattern": r"^[!#-\[\]-~]([ !#-\[\]-~]*[!#-\[\]-~])?$",
}

_IDEMPOTENCY = {
    400: "the Idempotency-Key header is missing or invalid",
    409: "a request with this Idempotency-Key is still being processed",
    413: "the request body is larger than idempotent requests may be",
    422: "the request is invalid, or its Idempotency-Key was used for a different request",
    503: "the idempotency store is unavailable (failing closed)",
}
_RATE_LIMIT = {
    429: "rate limited: see the Retry-After and RateLimit headers",
    503: "the rate-limit store is unavailable (failing closed)",
}


def _matches(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)


def _declare(operation: dict[str, Any], statuses: dict[int, str]) -> None:
    responses = operation.setdefault("responses", {})
    for status, description in statuses.items():
        responses.setdefault(
            str(status), {"description": description, "content": {PROBLEM: {"schema": {}}}}
        )


def document_middleware(
    app: FastAPI, idempotency: IdempotencySettings, tiers: Iterable[Tier]
) -> None:
    """Complete ``app.openapi()`` with the key header and the middleware's own answers."""
    tiers = tuple(tiers)
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        for path, item in document.get("paths", {}).items():
            for method, operation in item.items():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                verb = method.upper()
                keyed = (
                    verb in idempotency.methods
                    and _matches(path, idempotency.include)
                    and not _matches(path, idempotency.exclude)
                )
                if keyed and _matches(path, idempotency.require_key):
                    operation.setdefault("parameters", []).insert(
                        0,
                        {
                            "name": idempotency.header_name,
                            "in": "header",
                            "required": True,
                            "description": "a key of the client's choice, unique per "
                            "operation; a retry with the same key replays the first answer",
                            "schema": {**_KEY_SCHEMA, "maxLength": idempotency.max_key_length},
                        },
                    )
                if keyed:
                    _declare(operation, _IDEMPOTENCY)
                if "requestBody" in operation:
                    _declare(operation, {400: "the request body is not valid JSON"})
                if any(
                    _matches(path, tier.routes) and (not tier.methods or verb in tier.methods)
                    for tier in tiers
                ):
                    _declare(operation, _RATE_LIMIT)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
