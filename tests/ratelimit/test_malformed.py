"""Whatever a client sends, the rate limiter answers 200 or 429, never a 500."""

from __future__ import annotations

import json

import anyio
from hypothesis import given
from hypothesis import strategies as st

from bastion import Tier
from bastion.ratelimit import keys
from tests.ratelimit.conftest import call, limited

APP = limited(
    Tier(name="ip", limit=1000, window=60, algorithm="gcra"),
    Tier(
        name="wallet",
        limit=1000,
        window=60,
        key=keys.json_field("event.id", fallback=keys.query_param("wallet")),
    ),
    Tier(name="apikey", limit=1000, window=60, key=keys.header("x-api-key", hashed=False)),
    Tier(name="fwd", limit=1000, window=60, key=keys.header("forwarded")),
    trusted_proxies=("0.0.0.0/0", "::/0"),
    proxy_header="x-forwarded-for",
    max_body_bytes=256,
)

header_names = st.sampled_from(
    [b"x-forwarded-for", b"forwarded", b"content-length", b"x-api-key", b"content-type"]
)
json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
bodies = st.one_of(
    st.binary(max_size=600),
    json_like.map(lambda value: json.dumps({"event": {"id": value}}).encode()),
    st.integers(1, 5000).map(lambda depth: b'{"event":' * depth),
    st.just(b"1" * 5000),
)


@given(
    headers=st.lists(
        st.tuples(header_names, st.binary(max_size=200) | st.just(b"9" * 5000)), max_size=6
    ),
    body=bodies,
    chunks=st.integers(1, 4),
    query=st.binary(max_size=100),
    peer=st.sampled_from(["10.0.0.1", "::1", "testclient", "", "::ffff:1.2.3.4"]),
)
def test_malformed_input_never_breaks_the_limiter(
    headers: list[tuple[bytes, bytes]], body: bytes, chunks: int, query: bytes, peer: str
) -> None:
    """Arbitrary header bytes, bodies (binary, deep, huge numbers), queries and peers: 200."""
    size = max(1, len(body) // chunks)
    parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]

    async def main() -> None:
        status, _, echoed = await call(
            APP, method="POST", headers=headers, body=parts, query=query, peer=(peer, 1)
        )
        assert status == 200
        assert json.loads(echoed)["body"] == body.decode("latin-1")

    anyio.run(main)
