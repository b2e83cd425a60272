"""Every idempotency rule, through HTTP, in Starlette, FastAPI and Litestar."""

from __future__ import annotations

import httpx
import pytest

from bastion import IdempotencySettings
from bastion.stores import MemoryStore
from tests.conftest import FakeClock
from tests.idempotency.apps import BINARY, STREAM_CHUNKS, Backend
from tests.idempotency.conftest import Factory

pytestmark = pytest.mark.anyio

KEY = {"Idempotency-Key": "order-1"}


def assert_problem(response: httpx.Response, status: int, slug: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    assert problem["type"] == f"urn:bastion:problem:{slug}"
    assert problem["title"]
    assert problem["detail"]


async def test_first_request_runs_and_retry_replays(
    client: httpx.AsyncClient, backend: Backend
) -> None:
    """A retry gets the first response byte for byte, marked as replayed, without running."""
    first = await client.post("/charge", json={"amount": 5}, headers=KEY)
    second = await client.post("/charge", json={"amount": 5}, headers=KEY)
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert second.status_code == 201
    assert second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"
    assert second.headers["x-charge"] == "yes"
    assert second.headers["content-type"] == first.headers["content-type"]
    assert backend.calls["charge"] == 1


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/text", None),
        ("PUT", "/binary", BINARY),
        ("POST", "/stream", b"".join(STREAM_CHUNKS)),
    ],
)
async def test_any_response_type_is_replayed(
    client: httpx.AsyncClient,
    backend: Backend,
    method: str,
    path: str,
    expected: bytes | None,
) -> None:
    """Text, binary and streamed bodies are all stored and replayed identically."""
    first = await client.request(method, path, headers=KEY)
    second = await client.request(method, path, headers=KEY)
    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    if expected is not None:
        assert first.content == expected
    assert second.headers["content-type"] == first.headers["content-type"]
    assert second.headers["idempotent-replayed"] == "true"
    assert sum(backend.calls.values()) == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/charge", {"amount": 6}),
        ("/charge?currency=eur", {"amount": 5}),
        ("/text", {"amount": 5}),
    ],
)
async def test_same_key_for_another_request_is_422(
    client: httpx.AsyncClient, backend: Backend, path: str, body: dict[str, int]
) -> None:
    """Another body, query or route under a used key is refused, never run."""
    await client.post("/charge", json={"amount": 5}, headers=KEY)
    response = await client.post(path, json=body, headers=KEY)
    assert_problem(response, 422, "idempotency-key-reused")
    assert backend.calls["charge"] == 1
    assert backend.calls["text"] == 0


async def test_keys_are_scoped_to_the_principal(
    client: httpx.AsyncClient, backend: Backend
) -> None:
    """Two tenants can use the same key; neither sees the other's response."""
    alice = {**KEY, "Authorization": "Bearer alice"}
    bob = {**KEY, "Authorization": "Bearer bob"}
    first = await client.post("/charge", json={"amount": 5}, headers=alice)
    other = await client.post("/charge", json={"amount": 9}, headers=bob)
    assert other.status_code == 201
    assert "idempotent-replayed" not in other.headers
    assert other.json()["amount"] == 9
    assert backend.calls["charge"] == 2
    replay = await client.post("/charge", json={"amount": 5}, headers=alice)
    assert replay.content == first.content


async def test_custom_principal_extractor(make_client: Factory, backend: Backend) -> None:
    """A configured extractor decides the tenant, here a header of the app's own."""
    client = make_client(
        principal=lambda scope: dict(scope["headers"]).get(b"x-tenant", b"").decode()
    )
    await client.post("/charge", json={}, headers={**KEY, "x-tenant": "a"})
    await client.post("/charge", json={}, headers={**KEY, "x-tenant": "b"})
    replay = await client.post("/charge", json={}, headers={**KEY, "x-tenant": "a"})
    assert replay.headers["idempotent-replayed"] == "true"
    assert backend.calls["charge"] == 2


async def test_structured_field_and_bare_key_are_the_same(
    client: httpx.AsyncClient, backend: Backend
) -> None:
    """``"abc"`` (RFC 8941 string) and ``abc`` name one key."""
    await client.post("/charge", json={}, headers={"Idempotency-Key": '"8e03-abc"'})
    replay = await client.post("/charge", json={}, headers={"Idempotency-Key": "8e03-abc"})
    assert replay.headers["idempotent-replayed"] == "true"
    assert backend.calls["charge"] == 1


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b'""',
        b"x" * 256,
        b"tab\there",
        b"bell\x07",
        b'"unterminated\\"',
        b"caf\xc3\xa9",
    ],
    ids=["empty", "blank", "empty-string", "too-long", "tab", "control", "bad-escape", "non-ascii"],
)
async def test_invalid_keys_are_400(
    client: httpx.AsyncClient, backend: Backend, raw: bytes
) -> None:
    """Empty, over-long or non-printable keys are refused with a clear problem."""
    response = await client.post("/charge", json={}, headers=[(b"idempotency-key", raw)])
    assert_problem(response, 400, "idempotency-key-invalid")
    assert backend.calls["charge"] == 0


async def test_longest_valid_key_is_accepted(client: httpx.AsyncClient) -> None:
    """A key of exactly the maximum length works."""
    response = await client.post("/charge", json={}, headers={"Idempotency-Key": "k" * 255})
    assert response.status_code == 201


async def test_required_key_missing_is_400(client: httpx.AsyncClient, backend: Backend) -> None:
    """A route that requires a key refuses requests without one."""
    response = await client.post("/charge", json={})
    assert_problem(response, 400, "idempotency-key-missing")
    assert backend.calls["charge"] == 0


async def test_optional_key_missing_passes_through(
    client: httpx.AsyncClient, backend: Backend
) -> None:
    """Without a key, a route that does not require one runs every time."""
    await client.post("/text")
    await client.post("/text")
    assert backend.calls["text"] == 2


async def test_safe_methods_pass_through(client: httpx.AsyncClient, backend: Backend) -> None:
    """GET is not governed by default, key or not."""
    await client.get("/read", headers=KEY)
    second = await client.get("/read", headers=KEY)
    assert "idempotent-replayed" not in second.headers
    assert backend.calls["read"] == 2


async def test_excluded_paths_pass_through(make_client: Factory, backend: Backend) -> None:
    """Excluded paths are never governed."""
    client = make_client(IdempotencySettings(exclude=("/te*",)))
    await client.post("/text", headers=KEY)
    await client.post("/text", headers=KEY)
    assert backend.calls["text"] == 2


@pytest.mark.parametrize("path", ["/fail", "/boom", "/limited"])
async def test_unstored_outcomes_release_the_key(
    client: httpx.AsyncClient, backend: Backend, path: str
) -> None:
    """5xx answers, handler exceptions and 429s are not stored: a retry runs again."""
    first = await client.post(path, headers=KEY)
    second = await client.post(path, headers=KEY)
    assert first.status_code >= 429
    assert "idempotent-replayed" not in second.headers
    assert backend.calls[path.strip("/")] == 2


async def test_server_errors_can_be_stored(make_client: Factory, backend: Backend) -> None:
    """With store_server_errors, a 5xx is replayed like any other answer."""
    client = make_client(IdempotencySettings(store_server_errors=True))
    await client.post("/fail", headers=KEY)
    replay = await client.post("/fail", headers=KEY)
    assert replay.status_code == 503
    assert replay.headers["idempotent-replayed"] == "true"
    assert backend.calls["fail"] == 1


async def test_oversized_response_is_sent_but_not_stored(
    make_client: Factory, backend: Backend
) -> None:
    """A response over the cap reaches the client whole, and a retry runs again."""
    client = make_client(IdempotencySettings(max_response_bytes=100))
    first = await client.put("/binary", headers=KEY)
    assert first.content == BINARY
    second = await client.put("/binary", headers=KEY)
    assert "idempotent-replayed" not in second.headers
    assert backend.calls["binary"] == 2


async def test_set_cookie_is_not_replayed(client: httpx.AsyncClient) -> None:
    """A replay never hands out the first response's cookies."""
    first = await client.post("/cookie", headers=KEY)
    replay = await client.post("/cookie", headers=KEY)
    assert "set-cookie" in first.headers
    assert "set-cookie" not in replay.headers
    assert replay.content == first.content


async def test_oversized_request_is_413(make_client: Factory, backend: Backend) -> None:
    """Bodies too large to fingerprint are refused before the handler runs."""
    client = make_client(IdempotencySettings(max_request_bytes=10))
    response = await client.post("/charge", content=b"x" * 11, headers=KEY)
    assert_problem(response, 413, "request-too-large")
    assert backend.calls["charge"] == 0


async def test_replay_expires_with_the_record(
    client: httpx.AsyncClient, backend: Backend, clock: FakeClock
) -> None:
    """After the TTL the key is forgotten and the request runs again."""
    await client.post("/charge", json={}, headers=KEY)
    clock.advance(86_401)
    second = await client.post("/charge", json={}, headers=KEY)
    assert "idempotent-replayed" not in second.headers
    assert backend.calls["charge"] == 2


async def test_crashed_holder_lease_expires(
    client: httpx.AsyncClient, backend: Backend, store: MemoryStore, clock: FakeClock
) -> None:
    """A lease left by a dead worker blocks retries only until it expires, and once it is
    overdue for renewal the 409's Retry-After says when that is."""
    first = await client.post("/text", headers=KEY)
    assert first.status_code == 200
    # a worker that claimed a key and died without completing or releasing it
    from bastion.idempotency._fingerprint import fingerprint
    from bastion.idempotency._keys import default_principal, scoped_key

    scope = {"headers": [], "client": ("127.0.0.1", 123)}
    key = scoped_key(default_principal(scope), "crashed")
    fp = fingerprint("POST", "/charge", b"", b"{}")
    await store.claim(key, fp, "dead-worker", lease_ms=30_000)
    headers = {"Idempotency-Key": "crashed"}
    blocked = await client.post("/charge", content=b"{}", headers=headers)
    assert_problem(blocked, 409, "idempotency-key-in-flight")
    assert blocked.headers["retry-after"] == "1"
    # 21 s on, the holder has missed its renewal: the key stays taken the lease's last 9 s
    clock.advance(21)
    overdue = await client.post("/charge", content=b"{}", headers=headers)
    assert_problem(overdue, 409, "idempotency-key-in-flight")
    assert overdue.headers["retry-after"] == "9"
    clock.advance(10)
    retried = await client.post("/charge", content=b"{}", headers=headers)
    assert retried.status_code == 201
    assert backend.calls["charge"] == 1
