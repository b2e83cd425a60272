"""Key extractors: headers, query parameters, JSON body fields, custom callables, fallbacks."""

from __future__ import annotations

from typing import Any

import pytest

from bastion import ConfigurationError, RateLimitMiddleware, RateLimitSettings, Tier
from bastion.ratelimit import AddressResolver, keys
from bastion.ratelimit.keys import MISSING, RequestView
from tests.ratelimit.conftest import CountingStore, call, limited

pytestmark = pytest.mark.anyio


def scope(
    peer: str | None = "203.0.113.9",
    headers: list[tuple[bytes, bytes]] | None = None,
    query: bytes = b"",
) -> dict[str, Any]:
    return {
        "type": "http",
        "client": None if peer is None else (peer, 1234),
        "headers": headers or [],
        "query_string": query,
    }


def view(body: bytes | None = None, **options: Any) -> RequestView:
    return RequestView(scope(**options), AddressResolver(), body)


# -- header, query, custom ------------------------------------------------------------------


def test_header_key_is_hashed_by_default() -> None:
    """An API key never reaches the store in clear; equal keys hash alike."""
    extract = keys.header("X-API-Key")
    key = extract(view(headers=[(b"x-api-key", b"secret-123")]))
    assert key is not None
    assert key.startswith("hdr:x-api-key=")
    assert "secret" not in key
    assert key == extract(view(headers=[(b"x-api-key", b" secret-123 ")]))
    plain = keys.header("x-tenant", hashed=False)(view(headers=[(b"x-tenant", b"acme")]))
    assert plain == "hdr:x-tenant=acme"


def test_missing_key_falls_back_to_the_client_address() -> None:
    """A request without the header is limited per address, not in one shared bucket."""
    assert keys.header("x-api-key")(view()) == "addr:203.0.113.9"
    assert keys.header("x-api-key")(view(headers=[(b"x-api-key", b"  ")])) == "addr:203.0.113.9"
    assert keys.header("x-api-key", fallback=None)(view()) is None


def test_query_param_key_and_chain() -> None:
    """A query parameter is percent-decoded; a chain asks each extractor in turn."""
    extract = keys.json_field("wallet", fallback=keys.query_param("wallet"))
    assert extract(view(query=b"a=1&wallet=0x%41b")) == "qs:wallet=0xAb"
    assert extract(view(b'{"wallet": "0xcd"}', query=b"wallet=0xab")) == "json:wallet=0xcd"
    assert extract(view(query=b"wallet=")) == "addr:203.0.113.9"
    assert extract.needs_body


def test_long_or_odd_values_are_hashed() -> None:
    """Values too long or outside printable ASCII become a hash, keeping store keys small."""
    extract = keys.query_param("k")
    long_key = extract(view(query=b"k=" + b"x" * 500))
    odd_key = extract(view(query=b"k=a%0Ab"))
    unicode_key = extract(view(query=b"k=caf%C3%A9"))
    for key in (long_key, odd_key, unicode_key):
        assert key is not None
        assert key.startswith("qs:k=#")
        assert len(key) < 50
    assert long_key != odd_key != unicode_key


def test_custom_extractor_sees_the_request() -> None:
    """A custom callable gets the RequestView and its keys are namespaced by its name."""
    extract = keys.custom(lambda request: request.scope.get("user"), name="user")
    request = view()
    request.scope["user"] = "42"
    assert extract(request) == "user:42"
    assert extract(view()) == "addr:203.0.113.9"
    with pytest.raises(ConfigurationError):
        keys.custom(lambda request: None, name="a:b")


# -- JSON body -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (b'{"event": {"id": "evt_1"}}', "json:event.id=evt_1"),
        (b'{"event": {"id": 17}}', "json:event.id=17"),
        (b'{"event": {"id": true}}', "addr:203.0.113.9"),
        (b'{"event": {"id": null}}', "addr:203.0.113.9"),
        (b'{"event": {"id": ""}}', "addr:203.0.113.9"),
        (b'{"event": ["id"]}', "addr:203.0.113.9"),
        (b'{"event": "id"}', "addr:203.0.113.9"),
        (b"[1, 2]", "addr:203.0.113.9"),
        (b"not json", "addr:203.0.113.9"),
        (b"[" * 100_000, "addr:203.0.113.9"),
        (b"\xff\xfe\x00", "addr:203.0.113.9"),
        (b"", "addr:203.0.113.9"),
        (None, "addr:203.0.113.9"),
    ],
)
def test_json_field_falls_back_on_anything_unusable(body: bytes | None, key: str) -> None:
    """Only a string or integer at the path is a key; anything else falls back."""
    assert keys.json_field("event.id")(view(body)) == key


def test_json_field_walks_lists_and_dotted_names() -> None:
    """Digits index lists; a sequence path reaches names that contain dots."""
    assert keys.json_field("items.1.sku")(view(b'{"items": [{}, {"sku": "s2"}]}')) == (
        "json:items.1.sku=s2"
    )
    assert keys.json_field(["a.b"])(view(b'{"a.b": "x"}')) == "json:a.b=x"
    with pytest.raises(ConfigurationError):
        keys.json_field("a..b")


def test_request_view_parses_the_body_once() -> None:
    """The JSON body is parsed on first use and kept for every later extractor."""
    request = view(b'{"a": 1}')
    assert request.json is request.json == {"a": 1}
    assert view(b"null").json is None
    assert view().json is MISSING


async def test_json_body_key_leaves_the_body_intact_for_the_handler() -> None:
    """The handler reads exactly the bytes the client sent, in one chunk or several."""
    store = CountingStore()
    app = limited(Tier(name="w", limit=9, window=60, key=keys.json_field("wallet")), store=store)
    body = b'{"wallet": "0xabc", "amount": 5}'
    status, _, echoed = await call(app, method="POST", body=[body[:7], body[7:20], body[20:]])
    assert status == 200
    assert echoed == b'{"path": "/", "body": "{\\"wallet\\": \\"0xabc\\", \\"amount\\": 5}"}'
    assert store.calls[0][0].key == "w:json:wallet=0xabc"


async def test_body_over_the_cap_falls_back_and_reaches_the_handler_whole() -> None:
    """Too large a body is not parsed (the key falls back) yet the handler gets all of it."""
    store = CountingStore()
    app = limited(
        Tier(name="w", limit=9, window=60, key=keys.json_field("wallet")),
        store=store,
        max_body_bytes=16,
    )
    body = b'{"wallet": "0xabc", "padding": "' + b"x" * 100 + b'"}'
    chunked = await call(app, method="POST", body=[body[:10], body[10:30], body[30:]])
    declared = await call(
        app, method="POST", body=body, headers=[(b"content-length", b"%d" % len(body))]
    )
    for status, _, echoed in (chunked, declared):
        assert status == 200
        assert body.decode() in echoed.decode().replace('\\"', '"')
    assert [hits[0].key for hits in store.calls] == ["w:addr:127.0.0.1"] * 2


async def test_body_is_read_only_when_an_applicable_tier_needs_it() -> None:
    """A request matched only by tiers without body keys streams to the handler unbuffered."""
    received: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        received.append(len(message["body"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = RateLimitMiddleware(
        app,
        store=CountingStore(),
        settings=RateLimitSettings(
            tiers=(
                Tier(name="ip", limit=9, window=60),
                Tier(name="w", limit=9, window=60, key=keys.json_field("w"), routes=("/body",)),
            )
        ),
    )
    status, _, _ = await call(middleware, method="POST", path="/stream", body=[b"ab", b"cd"])
    assert (status, received) == (204, [2])


async def test_client_that_disconnects_while_the_body_is_read_gets_nothing() -> None:
    """A client gone before its body is complete is dropped without running the handler."""
    app = limited(Tier(name="w", limit=9, window=60, key=keys.json_field("wallet")))
    sent: list[Any] = []
    messages = [{"type": "http.request", "body": b"{", "more_body": True}]

    async def receive() -> Any:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    request = {"type": "http", "method": "POST", "path": "/", "headers": [], "client": None}
    await app(request, receive, send)
    assert sent == []


def test_tier_rejects_something_that_is_not_an_extractor() -> None:
    """A key that is not an extractor is refused when the tier is built."""
    with pytest.raises(ConfigurationError, match="extractor"):
        Tier(name="t", limit=1, window=1, key="wallet")  # type: ignore[arg-type]


@pytest.mark.parametrize("length", [b"9" * 5000, b"-1", b"abc", b"1e9"])
async def test_absurd_content_length_is_not_trusted(length: bytes) -> None:
    """A content-length too long to parse or not a number never breaks body buffering."""
    app = limited(Tier(name="w", limit=9, window=60, key=keys.json_field("wallet")))
    body = b'{"wallet": "0xabc"}'
    status, _, echoed = await call(
        app, method="POST", body=body, headers=[(b"content-length", length)]
    )
    assert status == 200
    assert b"0xabc" in echoed


def test_extractor_arguments_are_validated() -> None:
    """Empty or non-ASCII header and query names fail when the tier is built."""
    for bad in (lambda: keys.header(""), lambda: keys.header("x-caf\u00e9")):
        with pytest.raises(ConfigurationError, match="header name"):
            bad()
    with pytest.raises(ConfigurationError, match="query parameter"):
        keys.query_param("")


def test_missing_is_falsy_and_says_so() -> None:
    """MISSING reads as false in a condition and names itself in reprs."""
    assert not MISSING
    assert repr(MISSING) == "MISSING"
    assert repr(keys.client_address()) == "client_address()"


def test_hashed_header_keys_are_cached_within_a_bound() -> None:
    """A hashed header key is the same whether hashed afresh or cached, and the cache never
    holds more than its bound."""
    extractor = keys.header("x-api-key")
    first = extractor(view(headers=[(b"x-api-key", b"k-0")]))
    for n in range(keys._DIGEST_CACHE_SIZE * 2):
        extractor(view(headers=[(b"x-api-key", b"k-%d" % n)]))
        assert len(keys._DIGESTS) <= keys._DIGEST_CACHE_SIZE
    assert extractor(view(headers=[(b"x-api-key", b"k-0")])) == first
    assert first != extractor(view(headers=[(b"x-api-key", b"k-1")]))
