"""Store failures and hostile input: never a 500, never a duplicate run."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion import IdempotencyMiddleware, IdempotencySettings, StoreError
from bastion.exceptions import ConfigurationError
from bastion.stores import Claim, MemoryStore
from bastion.testing import FaultyStore
from tests.asgi import http_scope
from tests.idempotency.apps import Backend, starlette_app
from tests.idempotency.conftest import Factory

pytestmark = pytest.mark.anyio

KEY = {"Idempotency-Key": "fail-1"}


def broken_store(primitive: str) -> FaultyStore:
    """A memory store whose ``primitive`` fails like an unreachable backend."""
    store = FaultyStore(MemoryStore())
    store.fail(primitive, StoreError("backend down"))
    return store


async def test_store_down_fails_closed_with_503(make_client: Factory, backend: Backend) -> None:
    """By default an unreachable store refuses the request rather than risk a double run."""
    client = make_client(store=broken_store("claim"))
    response = await client.post("/charge", json={}, headers=KEY)
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"
    assert backend.calls["charge"] == 0


async def test_store_down_fails_open_when_configured(
    make_client: Factory, backend: Backend
) -> None:
    """With fail_open the request runs unprotected instead."""
    client = make_client(IdempotencySettings(fail_open=True), store=broken_store("claim"))
    response = await client.post("/charge", json={}, headers=KEY)
    assert response.status_code == 201
    assert backend.calls["charge"] == 1


async def test_store_failing_on_completion_still_answers(
    make_client: Factory, backend: Backend
) -> None:
    """The client still gets its response when storing it fails afterwards."""
    client = make_client(store=broken_store("complete"))
    response = await client.post("/charge", json={"amount": 3}, headers=KEY)
    assert response.status_code == 201
    assert response.json()["amount"] == 3


def test_store_must_implement_the_protocol() -> None:
    """A store without the idempotency primitives is refused at start-up."""
    with pytest.raises(ConfigurationError):
        IdempotencyMiddleware(starlette_app(Backend()), store=object())  # type: ignore[arg-type]


async def test_non_http_scopes_pass_through() -> None:
    """Lifespan and websocket scopes reach the app untouched."""
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = IdempotencyMiddleware(app, store=MemoryStore())
    await middleware({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    await middleware({"type": "websocket", "path": "/", "headers": []}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan", "websocket"]


async def test_client_disconnect_while_sending_body_runs_nothing() -> None:
    """A client that leaves mid-body never reaches the handler."""
    backend = Backend()
    middleware = IdempotencyMiddleware(starlette_app(backend), store=MemoryStore())
    messages = [
        {"type": "http.request", "body": b"{", "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Any] = []

    async def receive() -> Any:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/charge",
        "query_string": b"",
        "headers": [(b"idempotency-key", b"k")],
        "client": ("127.0.0.1", 1),
    }
    await middleware(scope, receive, send)
    assert sent == []
    assert backend.calls["charge"] == 0


def receive_once(body: bytes) -> Any:
    """A receive channel that delivers the body, then waits like a client that stays."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Any:
        if pending:
            return pending.pop()
        await anyio.sleep_forever()
        return None

    return receive


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=150)
@given(
    raw_key=st.binary(max_size=300),
    body=st.binary(max_size=200),
    extra=st.lists(
        st.tuples(st.binary(min_size=1, max_size=20).map(bytes.lower), st.binary(max_size=40)),
        max_size=4,
    ),
    path=st.sampled_from(["/charge", "/text", "/read", "/nowhere", "/stream"]),
    method=st.sampled_from(["POST", "PUT", "PATCH", "DELETE", "GET"]),
)
async def test_arbitrary_headers_and_bodies_never_500(
    raw_key: bytes, body: bytes, extra: list[tuple[bytes, bytes]], path: str, method: str
) -> None:
    """Whatever the key bytes, headers and body, the middleware never answers 5xx itself."""
    backend = Backend()
    middleware = IdempotencyMiddleware(starlette_app(backend), store=MemoryStore())
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = http_scope(method, path, headers=[(b"idempotency-key", raw_key), *extra])
    await middleware(scope, receive_once(body), send)
    await middleware(scope, receive_once(body), send)
    statuses = [m["status"] for m in sent if m["type"] == "http.response.start"]
    assert len(statuses) == 2
    assert all(status < 500 for status in statuses)
    assert backend.calls["charge"] <= 1


async def test_exception_after_the_full_response_keeps_it() -> None:
    """A handler that raised after its whole response went out (a failing background task)
    ran: a retry replays that response instead of running the handler a second time."""
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    runs: list[int] = []

    async def notify() -> None:
        raise RuntimeError("mail server down")

    async def charge(request: Request) -> Response:
        runs.append(1)
        return JSONResponse(
            {"charge": len(runs)}, status_code=201, background=BackgroundTask(notify)
        )

    app = Starlette(routes=[Route("/charge", charge, methods=["POST"])])
    middleware = IdempotencyMiddleware(app, store=MemoryStore())
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    def scope() -> dict[str, Any]:
        return http_scope("POST", "/charge", headers=[(b"idempotency-key", b"bg")])

    with pytest.raises(RuntimeError):
        await middleware(scope(), receive_once(b"{}"), send)
    sent.clear()
    await middleware(scope(), receive_once(b"{}"), send)
    assert runs == [1]
    assert sent[0]["status"] == 201
    assert (b"idempotent-replayed", b"true") in sent[0]["headers"]
    assert sent[1]["body"] == b'{"charge":1}'


async def test_exception_mid_stream_releases_the_key() -> None:
    """A response cut short by an exception is never stored: a retry runs the handler again."""
    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        runs.append(1)
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("stream broke")

    middleware = IdempotencyMiddleware(app, store=MemoryStore())

    async def send(message: Any) -> None:
        pass

    for _ in range(2):
        scope = http_scope("POST", "/stream", headers=[(b"idempotency-key", b"cut")])
        with pytest.raises(RuntimeError):
            await middleware(scope, receive_once(b"{}"), send)
    assert runs == [1, 1]


class CorruptStore(MemoryStore):
    """A store whose stored responses come back as bytes of an unknown format."""

    async def claim(self, key: str, fingerprint: str, token: str, *, lease_ms: int) -> Claim:
        claim = await super().claim(key, fingerprint, token, lease_ms=lease_ms)
        if claim.response is not None:
            return claim._replace(response=b"\x09garbage")
        return claim


@pytest.mark.parametrize("fail_open", [False, True])
async def test_unreadable_stored_response_is_503_and_never_reruns(
    make_client: Factory, backend: Backend, fail_open: bool
) -> None:
    """A stored response that cannot be decoded (another format version, corruption) gets
    503 with Retry-After in every framework, failing open or not: the handler ran, and must
    not run again."""
    client = make_client(IdempotencySettings(fail_open=fail_open), store=CorruptStore())
    await client.post("/charge", json={}, headers=KEY)
    retry = await client.post("/charge", json={}, headers=KEY)
    assert retry.status_code == 503
    assert retry.headers["retry-after"] == "1"
    assert retry.json()["type"] == "urn:bastion:problem:idempotency-record-unreadable"
    assert backend.calls["charge"] == 1


async def test_different_keys_in_one_request_are_400(
    client: httpx.AsyncClient, backend: Backend
) -> None:
    """Two Idempotency-Key headers that disagree are refused; identical repeats are fine."""
    both = [(b"idempotency-key", b"a"), (b"idempotency-key", b"b")]
    same = [(b"idempotency-key", b"a"), (b"idempotency-key", b"a")]
    refused = await client.post("/charge", json={}, headers=both)
    accepted = await client.post("/charge", json={}, headers=same)
    assert refused.status_code == 400
    assert refused.json()["type"] == "urn:bastion:problem:idempotency-key-invalid"
    assert accepted.status_code == 201
    assert backend.calls["charge"] == 1


async def test_outer_middleware_editing_headers_in_place_is_not_stored() -> None:
    """A middleware outside that appends to the response's header list in place does not
    leak its header into the stored response, so a replay carries it once, not twice."""
    from bastion.typing import ASGIApp, Message, Receive, Scope, Send

    def outer(app: ASGIApp) -> ASGIApp:
        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            async def add_header(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"].append((b"x-outer", b"1"))
                await send(message)

            await app(scope, receive, add_header)

        return wrapped

    backend = Backend()
    app = outer(IdempotencyMiddleware(starlette_app(backend), store=MemoryStore()))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.post("/charge", json={}, headers=KEY)
        replay = await client.post("/charge", json={}, headers=KEY)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.headers.get_list("x-outer") == ["1"]
