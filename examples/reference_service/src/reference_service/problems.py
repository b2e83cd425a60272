"""RFC 9457 problem+json for every error the service gives, FastAPI's own included.

Handlers raise `ProblemError`; the handlers installed by `install` turn it, FastAPI's
request-validation errors (422, or 400 for a body that is not JSON at all), Starlette's
404/405 and anything unexpected (500, which no input should reach) into problem bodies.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

__all__ = ["PROBLEM", "ProblemError", "install", "problem"]

PROBLEM = "application/problem+json"
logger = logging.getLogger("reference_service")

TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Content too large",
    422: "Unprocessable content",
    500: "Internal server error",
    503: "Service unavailable",
}


def problem(
    status: int,
    slug: str,
    detail: str,
    *,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {
        "type": f"urn:bastion:problem:{slug}",
        "title": title or TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


class ProblemError(Exception):
    """Raise it from a handler to answer with a problem; ``extra`` becomes body members."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.slug, self.detail = status, slug, detail
        self.title, self.headers, self.extra = title, headers, extra

    def response(self) -> JSONResponse:
        return problem(
            self.status,
            self.slug,
            self.detail,
            title=self.title,
            headers=self.headers,
            **self.extra,
        )


def _pointer(loc: tuple[Any, ...]) -> str:
    parts = loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc
    return "/" + "/".join(str(part) for part in parts)


def validation_problem(errors: list[dict[str, Any]]) -> JSONResponse:
    if any(error.get("type") == "json_invalid" for error in errors):
        return problem(400, "malformed-json", "the request body is not valid JSON")
    items = []
    row: int | None = None
    for error in errors:
        loc = tuple(error.get("loc", ()))
        item: dict[str, Any] = {"pointer": _pointer(loc), "detail": str(error.get("msg", ""))}
        # a batch names its first bad row, so the client knows which one to fix
        if len(loc) >= 3 and loc[:2] == ("body", "payouts") and isinstance(loc[2], int):
            item["row"] = loc[2]
            row = loc[2] if row is None else min(row, loc[2])
        items.append(item)
    first = items[0] if items else {"pointer": "/", "detail": "invalid request"}
    detail = f"{first['pointer']}: {first['detail']}"
    if row is not None:
        detail = f"row {row} is invalid, so the batch was rejected; {detail}"
        return problem(422, "validation", detail, errors=items, row=row)
    return problem(422, "validation", detail, errors=items)


UNAVAILABLE: tuple[type[Exception], ...] = (
    OSError,  # connection refused or reset, before any driver wraps it
    TimeoutError,
    DBAPIError,
    RedisConnectionError,
    RedisTimeoutError,
)
"""A database or Redis that cannot be reached: a 503 to retry, not a 500."""


def _connection_lost(exc: DBAPIError) -> bool:
    return (
        exc.connection_invalidated
        or isinstance(exc, OperationalError | InterfaceError)
        or isinstance(exc.orig, OSError)
        or "connection" in str(exc.orig).lower()
    )


def install(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProblemError)
        return exc.response()

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return validation_problem(list(exc.errors()))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        detail = exc.detail if isinstance(exc.detail, str) else TITLES.get(exc.status_code, "")
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"nothing at {request.url.path}"
        return problem(exc.status_code, slug, detail, headers=dict(exc.headers or {}))

    async def on_unavailable(request: Request, exc: Exception) -> Response:
        if isinstance(exc, DBAPIError) and not _connection_lost(exc):
            return await on_error(request, exc)
        logger.warning(
            "a dependency is unreachable on %s %s: %r", request.method, request.url.path, exc
        )
        return problem(
            503,
            "dependency-unavailable",
            "a server this service depends on is unreachable; retry shortly",
            headers={"retry-after": "5"},
        )

    async def on_error(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "internal", "an unexpected error occurred; it has been logged")

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_error)
    for unavailable in UNAVAILABLE:
        app.add_exception_handler(unavailable, on_unavailable)
