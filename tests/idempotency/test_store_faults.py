"""Whatever a store raises or answers, the failure policy decides: never a 500.

Store clients fail in ways of their own (redis-py's cluster client raises `AttributeError`,
redis-py under trio a `RuntimeError`) and custom stores have bugs; every one of them, raised
from any primitive or answered as a malformed value, is a store failure.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import pytest

from bastion import IdempotencyMiddleware, IdempotencySettings
from bastion._logging import ThrottledLogger
from bastion.idempotency import _request as idempotency_request
from bastion.idempotency._fingerprint import fingerprint
from bastion.idempotency._keys import scoped_key
from bastion.stores import Claim, MemoryStore
from bastion.testing import FakeClock
from bastion.typing import ASGIApp, Receive, Scope, Send
from tests.idempotency.apps import Backend, starlette_app

pytestmark = pytest.mark.anyio

KEY = {"Idempotency-Key": "fault-1"}
BODY = b'{"amount": 5}'
PRINCIPAL = "tenant"
STORE_KEY = scoped_key(PRINCIPAL, "fault-1")
FINGERPRINT = fingerprint("POST", "/charge", b"", BODY)


class PluginBug(Exception):
    """A custom store's own bug."""


ERRORS = [
    pytest.param(AttributeError("'NoneType' object has no attribute 'execute'"), id="attribute"),
    pytest.param(RuntimeError("this operation requires asyncio"), id="runtime"),
    pytest.param(PluginBug("off by one"), id="custom"),
]

MALFORMED_CLAIMS = [
    pytest.param(None, id="none"),
    pytest.param((True, FINGERPRINT), id="plain-tuple"),
    pytest.param({"acquired": True}, id="dict"),
    pytest.param(Claim("yes", FINGERPRINT), id="acquired-not-bool"),  # type: ignore[arg-type]
    pytest.param(Claim(False, 42), id="fingerprint-not-str"),  # type: ignore[arg-type]
    pytest.param(Claim(False, FINGERPRINT, "text", 0), id="response-not-bytes"),  # type: ignore[arg-type]
    pytest.param(Claim(False, FINGERPRINT, None, "soon"), id="remaining-not-number"),  # type: ignore[arg-type]
]


def raising(error: Exception) -> Callable[[], Any]:
    def fault() -> Any:
        raise error

    return fault


def answering(answer: object) -> Callable[[], Any]:
    return lambda: answer


class FaultyStore(MemoryStore):
    """A memory store whose ``primitive`` fails (``fault()`` raises or answers) after its
    first ``after`` calls. Its clock stands still: a lease whose renewals fail must not run
    out on a slow machine before the test's handler completes (that is another test's case)."""

    def __init__(self, primitive: str, fault: Callable[[], Any], *, after: int = 0) -> None:
        super().__init__(clock=FakeClock())
        self.primitive = primitive
        self.fault = fault
        self.after = after
        self.calls: Counter[str] = Counter()
        self.renew_failed = anyio.Event()

    def _faulty(self, name: str) -> bool:
        self.calls[name] += 1
        return name == self.primitive and self.calls[name] > self.after

    async def claim(self, key: str, fingerprint: str, token: str, *, lease_ms: int) -> Claim:
        if self._faulty("claim"):
            return self.fault()  # type: ignore[no-any-return]
        return await super().claim(key, fingerprint, token, lease_ms=lease_ms)

    async def renew(self, key: str, token: str, *, lease_ms: int) -> bool:
        if self._faulty("renew"):
            if self.calls["renew"] >= 2:
                self.renew_failed.set()
            return self.fault()  # type: ignore[no-any-return]
        return await super().renew(key, token, lease_ms=lease_ms)

    async def complete(self, key: str, token: str, response: bytes, *, ttl_ms: int) -> bool:
        if self._faulty("complete"):
            return self.fault()  # type: ignore[no-any-return]
        return await super().complete(key, token, response, ttl_ms=ttl_ms)

    async def release(self, key: str, token: str) -> bool:
        if self._faulty("release"):
            return self.fault()  # type: ignore[no-any-return]
        return await super().release(key, token)


class Outcomes:
    """Records the idempotency outcomes the middleware reports."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def idempotency(self, scope: Scope, outcome: str) -> None:
        self.seen.append(outcome)

    def rate_limit(self, scope: Scope, tier: str, outcome: str) -> None:
        raise AssertionError("the idempotency middleware reported a rate-limit outcome")

    def store_call(self, backend: str, operation: str, seconds: float, *, error: bool) -> None:
        return None


def protected(app: ASGIApp, store: MemoryStore, observer: Outcomes, **settings: Any) -> ASGIApp:
    return IdempotencyMiddleware(
        app,
        store=store,
        settings=IdempotencySettings(**settings),
        principal=lambda scope: PRINCIPAL,
        observer=observer,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Both event loops: leases are renewed by a shared timer on asyncio, by a task group
    per request on trio."""
    return str(request.param)


@pytest.fixture
async def send() -> AsyncIterator[Callable[..., Any]]:
    """Posts to an app in process; an exception escaping the app fails the test."""
    clients: list[httpx.AsyncClient] = []

    async def post(app: ASGIApp, path: str = "/charge") -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
        client = httpx.AsyncClient(transport=transport, base_url="http://test")
        clients.append(client)
        return await client.post(path, content=BODY, headers=KEY)

    yield post
    for client in clients:
        await client.aclose()


async def expect_policy(
    response: httpx.Response, backend: Backend, observer: Outcomes, fail_open: bool
) -> None:
    assert "store_error" in observer.seen
    if fail_open:
        assert response.status_code == 201
        assert backend.calls["charge"] == 1
    else:
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == "urn:bastion:problem:store-unavailable"
        assert response.headers["retry-after"] == "1"
        assert backend.calls["charge"] == 0


@pytest.mark.parametrize("fail_open", [False, True])
@pytest.mark.parametrize("error", ERRORS)
async def test_any_exception_on_claim_gets_the_policy(
    send: Any, error: Exception, fail_open: bool
) -> None:
    """A claim that raises anything, not only StoreError, fails closed (503) or open (runs)."""
    backend, observer = Backend(), Outcomes()
    store = FaultyStore("claim", raising(error))
    response = await send(protected(starlette_app(backend), store, observer, fail_open=fail_open))
    await expect_policy(response, backend, observer, fail_open)


@pytest.mark.parametrize("fail_open", [False, True])
@pytest.mark.parametrize("answer", MALFORMED_CLAIMS)
async def test_a_malformed_claim_gets_the_policy(
    send: Any, answer: object, fail_open: bool
) -> None:
    """A claim answered with anything but a well-formed Claim is a store failure, not a 500
    nor a decision (422, 409) made on a wrong field."""
    backend, observer = Backend(), Outcomes()
    store = FaultyStore("claim", answering(answer))
    response = await send(protected(starlette_app(backend), store, observer, fail_open=fail_open))
    await expect_policy(response, backend, observer, fail_open)


@pytest.mark.parametrize("fail_open", [False, True])
@pytest.mark.parametrize(
    "fault",
    [
        *[pytest.param(raising(p.values[0]), id=f"raises-{p.id}") for p in ERRORS],
        pytest.param(answering(None), id="answers-none"),
        pytest.param(answering(Claim(False, FINGERPRINT, None, "soon")), id="answers-malformed"),
    ],
)
async def test_a_failing_reclaim_while_waiting_gets_the_policy(
    send: Any, fault: Callable[[], Any], fail_open: bool
) -> None:
    """A duplicate waiting for the first request (``wait=True``) whose later claims fail gets
    the policy too."""
    backend, observer = Backend(), Outcomes()
    store = FaultyStore("claim", fault, after=2)
    # the first request, in flight elsewhere, holds the key
    assert (await store.claim(STORE_KEY, FINGERPRINT, "elsewhere", lease_ms=60_000)).acquired
    app = protected(starlette_app(backend), store, observer, fail_open=fail_open, wait=True)
    response = await send(app)
    assert store.calls["claim"] == 3
    await expect_policy(response, backend, observer, fail_open)


@pytest.mark.parametrize("fail_open", [False, True])
@pytest.mark.parametrize(
    "fault",
    [*[pytest.param(raising(p.values[0]), id=p.id) for p in ERRORS]],
)
async def test_failing_renewals_are_reported_and_retried(
    send: Any, fault: Callable[[], Any], fail_open: bool
) -> None:
    """A renewal that raises anything is reported and tried again at the next interval; the
    request still completes and its response is stored."""
    store = FaultyStore("renew", fault)
    runs: list[int] = []

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        runs.append(1)
        await receive()
        # a hang guard only: the renewals come every ~17 ms (a third of the 50 ms lease)
        with anyio.fail_after(30):
            await store.renew_failed.wait()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    observer = Outcomes()
    app = protected(slow, store, observer, fail_open=fail_open, lease_seconds=0.05)
    first = await send(app)
    retry = await send(app)
    assert first.status_code == retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert runs == [1]
    assert store.calls["renew"] >= 2
    assert observer.seen.count("store_error") == store.calls["renew"]
    assert observer.seen[-2:] == ["stored", "replayed"]


@pytest.mark.parametrize("fail_open", [False, True])
@pytest.mark.parametrize(
    "fault",
    [
        *[pytest.param(raising(p.values[0]), id=p.id) for p in ERRORS],
        pytest.param(raising(anyio.BrokenResourceError()), id="broken-resource"),
    ],
)
async def test_a_failing_complete_still_answers_and_never_reruns(
    send: Any, fault: Callable[[], Any], fail_open: bool
) -> None:
    """Storing the response fails after it was sent: the client has it, the failure is
    reported, and the key stays in flight (409) rather than run again."""
    backend, observer = Backend(), Outcomes()
    app = protected(
        starlette_app(backend), FaultyStore("complete", fault), observer, fail_open=fail_open
    )
    first = await send(app)
    retry = await send(app)
    assert first.status_code == 201
    assert first.json()["amount"] == 5
    assert retry.status_code == 409
    assert backend.calls["charge"] == 1
    assert observer.seen == ["store_error", "conflict_in_flight"]


@pytest.mark.parametrize("fail_open", [False, True])
@pytest.mark.parametrize("error", ERRORS)
async def test_a_failing_release_still_answers(
    send: Any, error: Exception, fail_open: bool
) -> None:
    """Releasing the key after a 5xx fails: the client still gets the handler's answer."""
    backend, observer = Backend(), Outcomes()
    app = protected(
        starlette_app(backend),
        FaultyStore("release", raising(error)),
        observer,
        fail_open=fail_open,
    )
    response = await send(app, "/fail")
    assert response.status_code == 503
    assert response.json() == {"error": "down"}
    assert backend.calls["fail"] == 1
    assert observer.seen == ["store_error"]


async def test_store_failures_are_logged_with_their_type(
    send: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The warning names the exception type, so an operator sees a client library's bug."""
    monkeypatch.setattr(
        idempotency_request,
        "store_failures",
        ThrottledLogger(logging.getLogger("bastion.idempotency")),
    )
    store = FaultyStore("claim", raising(AttributeError("no attribute 'nodes'")))
    with caplog.at_level(logging.WARNING, logger="bastion.idempotency"):
        await send(protected(starlette_app(Backend()), store, Outcomes()))
    [record] = caplog.records
    assert "AttributeError" in record.getMessage()
    assert record.exc_info is not None
