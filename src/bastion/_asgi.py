"""ASGI plumbing shared by the middleware: headers, body buffering, problem+json answers."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from bastion.typing import Message, Receive, Scope, Send

__all__ = [
    "ANSWERED_SCOPE_KEY",
    "PROBLEM_CONTENT_TYPE",
    "BodyTooLarge",
    "ClientDisconnected",
    "header",
    "problem_json",
    "read_body",
    "replay_message",
    "replay_receive",
    "send_problem",
]

PROBLEM_CONTENT_TYPE = b"application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:bastion:problem:"

ANSWERED_SCOPE_KEY = "bastion.answered"
"""Set (to the middleware's name) by a bastion middleware that answers a request itself instead
of running the app (400, 409, 422, 429, 503, replays), so metrics can label such answers, which
never reach a router, apart from unmatched paths."""


class BodyTooLarge(Exception):
    """The request body exceeded the buffering limit."""


class ClientDisconnected(OSError):
    """The client went away: before the request body was complete, or (raised by a response
    capture's ``send``) while a response that cannot be stored was still streaming.

    An `OSError`, like the errors servers raise from ``send`` once the client has left, so
    frameworks that stop a response on those (Starlette on ASGI spec 2.4) stop on this too.
    """


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (``name`` in lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def read_body(receive: Receive, limit: int) -> bytes:
    """Buffer the whole request body, refusing more than ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def replay_message(message: Message, receive: Receive) -> Receive:
    """A receive callable that hands ``message`` (already received) over once, then defers
    to ``receive``."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return message
        return await receive()

    return replay


def replay_receive(body: bytes, receive: Receive, *, more_body: bool = False) -> Receive:
    """A receive callable that hands the buffered body over once, then defers to ``receive``.

    With ``more_body`` the buffered bytes are only a prefix and the rest still streams from
    ``receive``.
    """
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": more_body}
        return await receive()

    return replay


def problem_json(
    status: int, slug: str, title: str, detail: str, extra: Mapping[str, Any] | None = None
) -> bytes:
    """An RFC 9457 problem body; `send_problem` sends one, helpers returning a response object
    build theirs from it."""
    problem: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + slug,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if extra:
        problem.update(extra)
    return json.dumps(problem, separators=(",", ":")).encode()


async def send_problem(
    send: Send,
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    headers: Iterable[tuple[bytes, bytes]] = (),
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Answer with an RFC 9457 ``application/problem+json`` body."""
    body = problem_json(status, slug, title, detail, extra)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_CONTENT_TYPE),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
