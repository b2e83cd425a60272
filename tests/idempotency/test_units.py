"""Key parsing, fingerprints and the stored response format."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion._core.records import NOT_REPLAYED, StoredResponse, encode_response
from bastion.idempotency._fingerprint import fingerprint
from bastion.idempotency._keys import InvalidKey, default_principal, parse_key, scoped_key

PRINTABLE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)


@given(PRINTABLE)
def test_bare_and_quoted_keys_are_equal(key: str) -> None:
    """A key and its RFC 8941 string spelling parse to the same key."""
    quoted = '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    assert parse_key(quoted.encode(), 255) == parse_key(key.encode(), 255) or key.startswith('"')


def test_escaped_quote_in_structured_string() -> None:
    """Escapes inside a structured string are honoured."""
    assert parse_key(b'"a\\"b\\\\c"', 255) == 'a"b\\c'


@pytest.mark.parametrize("raw", [b'"a"b"', b'"a\\x"', b""])
def test_malformed_structured_strings_are_refused(raw: bytes) -> None:
    """Unescaped quotes, unknown escapes and empty values are invalid."""
    with pytest.raises(InvalidKey):
        parse_key(raw, 255)


def test_fingerprint_parts_cannot_be_shifted() -> None:
    """Moving bytes between path, query and body changes the fingerprint."""
    assert fingerprint("POST", "/a", b"b", b"") != fingerprint("POST", "/ab", b"", b"")
    assert fingerprint("POST", "/a", b"", b"b") != fingerprint("POST", "/a", b"b", b"")


def test_scoped_keys_differ_by_principal() -> None:
    """The same key under two principals gives two store keys."""
    assert scoped_key("a", "k") != scoped_key("b", "k")
    assert scoped_key("a\x00b", "k") != scoped_key("a", "b\x00k")


def test_default_principal_prefers_credentials() -> None:
    """Credentials name the principal (hashed); without them, the client address does."""
    with_auth = {"headers": [(b"authorization", b"Bearer s3cret")], "client": ("1.2.3.4", 1)}
    assert default_principal(with_auth).startswith("cred:")
    assert "s3cret" not in default_principal(with_auth)
    assert default_principal({"headers": [], "client": ("1.2.3.4", 1)}) == "addr:1.2.3.4"
    assert default_principal({"headers": [], "client": None}) == "anonymous"


@given(
    status=st.integers(100, 599),
    headers=st.lists(
        st.tuples(st.binary(min_size=1, max_size=10), st.binary(max_size=20)), max_size=5
    ),
    body=st.binary(max_size=200),
)
def test_stored_response_round_trips(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    """Encoding then decoding gives back the same status, headers and body bytes."""
    stored = StoredResponse(status, tuple(headers), body)
    assert StoredResponse.decode(stored.encode()) == stored


def encode_version_1(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """Format 1 as bastion wrote it up to commit 17aaa15: ``StoredResponse.capture`` (kept
    headers lower-cased, NOT_REPLAYED dropped) then ``StoredResponse.encode``."""
    kept = tuple((k.lower(), v) for k, v in headers if k.lower() not in NOT_REPLAYED)
    head = json.dumps(
        [status, [[k.decode("latin-1"), v.decode("latin-1")] for k, v in kept]],
        separators=(",", ":"),
    )
    return b"1" + head.encode() + b"\n" + body


@given(
    status=st.integers(100, 599),
    headers=st.lists(
        st.tuples(st.binary(min_size=1, max_size=10), st.binary(max_size=20)), max_size=5
    ),
    body=st.binary(max_size=200),
)
def test_version_1_records_are_still_read(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    """A record the previous format wrote decodes to the response it stored, every byte of
    header and body (newlines and non-ASCII included) intact."""
    kept = tuple((k.lower(), v) for k, v in headers if k.lower() not in NOT_REPLAYED)
    decoded = StoredResponse.decode(encode_version_1(status, headers, body))
    assert decoded == StoredResponse(status, kept, body)


def test_a_version_1_record_replays_as_the_current_format_would() -> None:
    """The same response stored in either format decodes to the same thing."""
    headers = [(b"Content-Type", b"application/json"), (b"Set-Cookie", b"s=1"), (b"X-A", b"\xe9")]
    body = b'{"ok":true}\n'
    assert StoredResponse.decode(encode_version_1(201, headers, body)) == StoredResponse.decode(
        encode_response(201, headers, body)
    )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x03\x00\xc8\x00\x00",
        b"\x02\x00\xc8\x00\x01\x00\x04",
        b"\x02\x00\x00\x00\x00body",
        b"1",
        b"1[200,[]]",
        b"1{}\n",
        b"1[200]\n",
        b"1[true,[]]\n",
        b"1[999,[]]\n",
        b'1[200,[["a"]]]\n',
        b"1[200,[[1,2]]]\n",
        b'1[200,[["\\u0100","x"]]]\n',
        b"1" + b"[" * 100_000 + b"\n",
    ],
)
def test_unreadable_records_raise_value_error(data: bytes) -> None:
    """Unknown versions, truncation, bad JSON, impossible statuses: ValueError, nothing else."""
    with pytest.raises(ValueError, match="stored response"):
        StoredResponse.decode(data)


@given(st.binary(max_size=64) | st.binary(max_size=64).map(lambda data: b"1" + data))
def test_decoding_any_bytes_raises_at_most_value_error(data: bytes) -> None:
    """Whatever bytes a store hands back, decoding gives a response or ValueError."""
    with contextlib.suppress(ValueError):
        StoredResponse.decode(data)


def test_capture_drops_hop_by_hop_and_cookies() -> None:
    """Set-Cookie and hop-by-hop fields are never stored."""
    encoded = encode_response(
        200,
        [
            (b"Set-Cookie", b"a=b"),
            (b"Connection", b"close"),
            (b"Transfer-Encoding", b"chunked"),
            (b"content-type", b"text/plain"),
        ],
        b"x",
    )
    assert StoredResponse.decode(encoded) == StoredResponse(
        200, ((b"content-type", b"text/plain"),), b"x"
    )


class _User:
    def __init__(self, identity: str | None, authenticated: bool = True) -> None:
        self._identity = identity
        self.is_authenticated = authenticated

    @property
    def identity(self) -> str:
        if self._identity is None:
            raise NotImplementedError
        return self._identity


def test_default_principal_prefers_an_authenticated_user() -> None:
    """A user put in the scope by authentication middleware outranks the raw credential, so a
    refreshed token keeps its principal; users without identity fall back to credentials."""
    token_1 = {"headers": [(b"authorization", b"Bearer one")], "user": _User("acct-7")}
    token_2 = {"headers": [(b"authorization", b"Bearer two")], "user": _User("acct-7")}
    assert default_principal(token_1) == default_principal(token_2) == "user:acct-7"
    anonymous = {"headers": [(b"authorization", b"Bearer one")], "user": _User("x", False)}
    no_identity = {"headers": [(b"authorization", b"Bearer one")], "user": _User(None)}
    assert default_principal(anonymous).startswith("cred:")
    assert default_principal(no_identity).startswith("cred:")


@pytest.mark.anyio
async def test_token_refresh_between_retries_still_replays() -> None:
    """With Starlette's AuthenticationMiddleware outside, a retry carrying a refreshed bearer
    token is the same principal and gets the replay instead of a second run."""
    import httpx
    from starlette.applications import Starlette
    from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
    from starlette.middleware import Middleware
    from starlette.middleware.authentication import AuthenticationMiddleware
    from starlette.requests import HTTPConnection, Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from bastion import IdempotencyMiddleware
    from bastion.stores import MemoryStore

    class Account(BaseUser):
        def __init__(self, account: str) -> None:
            self.account = account

        @property
        def is_authenticated(self) -> bool:
            return True

        @property
        def identity(self) -> str:
            return self.account

    class Tokens(AuthenticationBackend):
        async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser]:
            token = conn.headers["authorization"].removeprefix("Bearer ")
            return AuthCredentials(["pay"]), Account({"t1": "acct-7", "t2": "acct-7"}[token])

    runs = []

    async def pay(request: Request) -> JSONResponse:
        runs.append(1)
        return JSONResponse({"run": len(runs)}, status_code=201)

    app = Starlette(
        routes=[Route("/pay", pay, methods=["POST"])],
        middleware=[
            Middleware(AuthenticationMiddleware, backend=Tokens()),
            Middleware(IdempotencyMiddleware, store=MemoryStore()),
        ],
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        key = {"Idempotency-Key": "pay-1"}
        first = await client.post("/pay", headers={**key, "Authorization": "Bearer t1"})
        retry = await client.post("/pay", headers={**key, "Authorization": "Bearer t2"})
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.content == first.content
    assert runs == [1]


def test_principals_of_recent_credentials_are_cached_within_a_bound() -> None:
    """A credential's principal is hashed once while it stays cached, is the same afterwards,
    and the cache never holds more than its bound."""
    from bastion.idempotency import _keys

    def scope(credential: bytes) -> dict[str, object]:
        return {"type": "http", "headers": [(b"x-api-key", credential)], "client": ("h", 1)}

    first = default_principal(scope(b"key-0"))
    assert _keys._CREDENTIALS[b"key-0"] == first
    for n in range(_keys.CREDENTIAL_CACHE_SIZE * 2):
        default_principal(scope(b"key-%d" % n))
        assert len(_keys._CREDENTIALS) <= _keys.CREDENTIAL_CACHE_SIZE
    assert default_principal(scope(b"key-0")) == first != default_principal(scope(b"key-1"))
