"""One client, one bucket: spellings of one key, and one key from several sources."""

from __future__ import annotations

import json

import pytest

from bastion import ConfigurationError, Tier
from bastion.ratelimit import AddressResolver, keys
from bastion.ratelimit.keys import RequestView
from tests.ratelimit.conftest import call, limited

pytestmark = pytest.mark.anyio

CHECKSUMMED = "0x52908400098527886E0F7030069857D2E4169EE7"
WALLET = CHECKSUMMED.lower()
JSON = [(b"content-type", b"application/json")]


def view(
    body: bytes | None = None, headers: list[tuple[bytes, bytes]] | None = None, query: bytes = b""
) -> RequestView:
    scope = {
        "type": "http",
        "client": ("203.0.113.9", 1234),
        "headers": headers or [],
        "query_string": query,
    }
    return RequestView(scope, AddressResolver(), body)


async def statuses(tier: Tier, requests: list[dict[str, object]]) -> list[int]:
    """The status of each request, in turn, through a middleware holding only ``tier``."""
    app = limited(tier)
    return [(await call(app, method="POST", path="/", **r))[0] for r in requests]  # type: ignore[arg-type]


async def test_claim_preset_counts_a_wallet_in_body_or_query_once() -> None:
    """The claim preset's wallet is one bucket whether it comes in the body or the query, in
    any hex case: with a limit of one, the second spelling is refused."""
    tier = Tier.claim(environ={}, limit=1, routes=(), methods=frozenset())
    body = json.dumps({"wallet": CHECKSUMMED}).encode()
    assert await statuses(
        tier,
        [
            {"body": body, "headers": JSON},
            {"query": f"wallet={WALLET}".encode()},
            {"query": f"wallet={CHECKSUMMED}".encode()},
            {"query": b"wallet=0x" + b"1" * 40},
        ],
    ) == [200, 429, 429, 200]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (b"Bearer T0k3n", b"bearer T0k3n"),
        (b"Bearer T0k3n", b"BEARER   T0k3n "),
        (b"Bearer T0k3n", b" Bearer\tT0k3n"),
        (b"Basic dXNlcjpwdw==", b"basic   dXNlcjpwdw=="),
    ],
)
async def test_authorization_scheme_case_and_spacing_share_a_bucket(
    first: bytes, second: bytes
) -> None:
    """A tier keyed on Authorization counts ``Bearer T`` and ``bearer  T`` together; another
    token is another bucket."""
    tier = Tier(name="auth", limit=1, window=60, key=keys.header("Authorization"))
    assert await statuses(
        tier,
        [
            {"headers": [(b"authorization", first)]},
            {"headers": [(b"authorization", second)]},
            {"headers": [(b"authorization", b"Bearer other")]},
        ],
    ) == [200, 429, 200]


def test_credentials_keep_their_case() -> None:
    """Only the scheme is case-insensitive: tokens differing in case are different keys, and
    so is a lone token sent without a scheme."""
    extract = keys.header("authorization", hashed=False)
    assert (
        extract(view(headers=[(b"authorization", b"BEARER  AbC ")]))
        == "hdr:authorization=bearer AbC"
    )
    assert extract(view(headers=[(b"authorization", b"AbC")])) == "hdr:authorization=AbC"
    other = keys.header("x-api-key", hashed=False)
    assert other(view(headers=[(b"x-api-key", b"Bearer  AbC")])) == "hdr:x-api-key=Bearer  AbC"


@pytest.mark.parametrize(
    "extractor",
    [
        keys.json_field("wallet"),
        keys.query_param("wallet"),
        keys.header("x-wallet"),
        keys.header("x-wallet", hashed=False),
    ],
)
def test_hex_addresses_and_whitespace_are_one_spelling(extractor: keys.KeyExtractor) -> None:
    """A checksummed address, its lower case and a padded copy name the same bucket."""
    spellings = [CHECKSUMMED, WALLET, f"  {CHECKSUMMED}\t"]
    requests = [
        view(
            json.dumps({"wallet": value}).encode(),
            headers=[(b"x-wallet", value.encode())],
            query=b"wallet=" + value.replace("\t", "%09").replace(" ", "+").encode(),
        )
        for value in spellings
    ]
    found = {extractor(request) for request in requests}
    assert len(found) == 1
    assert None not in found


def test_hex_that_is_not_an_address_keeps_its_case() -> None:
    """Only ``0x`` and exactly 40 hex digits is an address; other values are case-sensitive."""
    extract = keys.query_param("k")
    assert extract(view(query=b"k=0xAB")) == "qs:k=0xAB"
    assert extract(view(query=b"k=" + CHECKSUMMED.encode() + b"0")) != extract(
        view(query=b"k=" + WALLET.encode() + b"0")
    )


def test_first_of_asks_each_source_then_its_own_fallback() -> None:
    """The first source with a value names the bucket, in one namespace; the sources' own
    fallbacks are never asked."""
    extract = keys.first_of(keys.json_field("wallet"), keys.query_param("wallet"))
    body = json.dumps({"wallet": "w1"}).encode()
    assert extract(view(body)) == extract(view(query=b"wallet=w1")) == "json:wallet|qs:wallet=w1"
    assert extract(view(body, query=b"wallet=w2")) == "json:wallet|qs:wallet=w1"
    assert extract(view(query=b"other=1")) == "addr:203.0.113.9"
    assert extract.needs_body
    named = keys.first_of(keys.query_param("a"), keys.header("b", hashed=False), name="id")
    assert named(view(headers=[(b"b", b" x ")])) == "id:x"
    assert not named.needs_body
    assert keys.first_of(keys.query_param("a"), fallback=None)(view()) is None


def test_first_of_arguments_are_validated() -> None:
    """No sources, a source that cannot be asked for its value, or a bad name fail at once."""
    with pytest.raises(ConfigurationError):
        keys.first_of()
    with pytest.raises(ConfigurationError, match="first_of takes"):
        keys.first_of(keys.client_address())
    for name in ("", "a:b", "a=b"):
        with pytest.raises(ConfigurationError, match="first_of name"):
            keys.first_of(keys.query_param("a"), name=name)
