"""Stored responses this version cannot read, or wrote in an older format, on every backend.

Another instance (an older or newer version, in a rolling deploy) ran the handler and stored
its response through the store's own claim and complete; this instance then gets the retry.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from bastion import IdempotencyMiddleware, IdempotencySettings
from bastion.idempotency._fingerprint import fingerprint
from bastion.idempotency._keys import scoped_key
from bastion.typing import Scope
from tests.idempotency.apps import Backend, starlette_app

pytestmark = pytest.mark.anyio

BODY = b'{"amount": 7}'
KEY = {"Idempotency-Key": "rolling-1"}
PRINCIPAL = "tenant"
STORE_KEY = scoped_key(PRINCIPAL, "rolling-1")
FINGERPRINT = fingerprint("POST", "/charge", b"", BODY)


class Outcomes:
    """Records the idempotency outcomes the middleware reports."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def idempotency(self, scope: Scope, outcome: str) -> None:
        self.seen.append(outcome)

    def rate_limit(self, scope: Scope, tier: str, outcome: str) -> None:
        return None

    def store_call(self, backend: str, operation: str, seconds: float, *, error: bool) -> None:
        return None


async def ran_elsewhere(store: Any, backend: Backend, response: bytes) -> None:
    """Another instance runs the handler once and stores ``response`` as its record."""
    backend.charge(BODY)
    assert (await store.claim(STORE_KEY, FINGERPRINT, "other-instance", lease_ms=30_000)).acquired
    assert await store.complete(STORE_KEY, "other-instance", response, ttl_ms=86_400_000)


async def retry(store: Any, backend: Backend, fail_open: bool, observer: Outcomes) -> Any:
    app = IdempotencyMiddleware(
        starlette_app(backend),
        store=store,
        settings=IdempotencySettings(fail_open=fail_open),
        principal=lambda scope: PRINCIPAL,
        observer=observer,  # type: ignore[arg-type]
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post("/charge", content=BODY, headers=KEY)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\x03\x00\xc9\x00\x00{}", id="newer-version"),
        pytest.param(b"\x02\x00\xc9\x00\x02\x00\x04", id="truncated"),
        pytest.param(b"1[201, [[\n{}", id="broken-version-1"),
    ],
)
async def test_an_unreadable_record_is_503_and_never_reruns(store: Any, payload: bytes) -> None:
    """A completed record whose response cannot be decoded is answered 503 problem+json with
    Retry-After, whether the middleware fails open or closed: the handler ran once, never
    again."""
    backend = Backend()
    await ran_elsewhere(store, backend, payload)
    for fail_open in (False, True):
        observer = Outcomes()
        for _ in range(2):
            response = await retry(store, backend, fail_open, observer)
            assert response.status_code == 503
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["retry-after"] == "1"
            problem = response.json()
            assert problem["type"] == "urn:bastion:problem:idempotency-record-unreadable"
            assert problem["status"] == 503
        assert observer.seen == ["record_unreadable", "record_unreadable"]
    assert backend.calls["charge"] == 1


def encode_version_1(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """The stored form bastion wrote before format 2 (commit 17aaa15), line for line:
    ``StoredResponse.capture`` then ``StoredResponse.encode``."""
    not_replayed = {b"set-cookie", b"date", b"server", b"connection", b"transfer-encoding"}
    kept = tuple((k.lower(), v) for k, v in headers if k.lower() not in not_replayed)
    head = json.dumps(
        [status, [[k.decode("latin-1"), v.decode("latin-1")] for k, v in kept]],
        separators=(",", ":"),
    )
    return b"1" + head.encode() + b"\n" + body


async def test_a_version_1_record_is_replayed(store: Any) -> None:
    """A record the previous format wrote (before an upgrade) is replayed byte for byte."""
    backend = Backend()
    body = b'{"charge":1,"amount":7}'
    headers = [(b"content-type", b"application/json"), (b"x-note", "caf\xe9".encode("latin-1"))]
    await ran_elsewhere(store, backend, encode_version_1(201, headers, body))
    for fail_open in (False, True):
        observer = Outcomes()
        response = await retry(store, backend, fail_open, observer)
        assert response.status_code == 201
        assert response.content == body
        assert response.headers["idempotent-replayed"] == "true"
        assert response.headers.raw[:2] == headers
        assert observer.seen == ["replayed"]
    assert backend.calls["charge"] == 1
