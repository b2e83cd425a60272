"""Whatever a client sends or a store answers, the rate limiter never answers 500."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion import Tier
from bastion._logging import ThrottledLogger
from bastion.ratelimit import _middleware as ratelimit_middleware
from bastion.ratelimit import keys
from bastion.stores import RateLimitDecision, RateLimitHit
from tests.ratelimit.conftest import RecordingObserver, broken_store, call, limited

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


class PluginBug(Exception):
    """A custom store's own bug."""


class AnsweringStore:
    """A rate-limit store that answers every call with the same value."""

    backend = "answering"

    def __init__(self, answer: object) -> None:
        self.answer = answer

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def hit(self, hits: Sequence[RateLimitHit]) -> list[RateLimitDecision]:
        return self.answer  # type: ignore[return-value]


ALLOW = RateLimitDecision(True, 10, 9, 6000)
DENY = RateLimitDecision(False, 10, 0, 6000, 6000)
TWO_TIERS = (
    Tier(name="burst", limit=10, window=60),
    Tier(name="daily", limit=10, window=86_400),
)


async def _through_http(store: Any, fail_open: bool) -> tuple[httpx.Response, RecordingObserver]:
    observer = RecordingObserver()
    app = limited(*TWO_TIERS, store=store, observer=observer, fail_open=fail_open)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.post("/pay", content=b"{}")
    return response, observer


def _expect_policy(response: httpx.Response, observer: RecordingObserver, fail_open: bool) -> None:
    assert observer.decisions == [("burst", "store_error"), ("daily", "store_error")]
    if fail_open:
        assert response.status_code == 200
        assert "ratelimit" not in response.headers
    else:
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == "urn:bastion:problem:rate-limit-store-unavailable"
        assert response.headers["retry-after"] == "1"


@pytest.mark.anyio
@pytest.mark.parametrize("fail_open", [True, False])
@pytest.mark.parametrize(
    "error",
    [
        pytest.param(AttributeError("'NoneType' object has no attribute 'nodes'"), id="attribute"),
        pytest.param(RuntimeError("this operation requires asyncio"), id="runtime"),
        pytest.param(PluginBug("off by one"), id="custom"),
    ],
)
async def test_any_store_exception_gets_the_tier_policy(error: Exception, fail_open: bool) -> None:
    """Whatever the store raises, each tier's fail_open answers: 200 or 503, never a 500."""
    response, observer = await _through_http(broken_store(error), fail_open)
    _expect_policy(response, observer, fail_open)


@pytest.mark.anyio
@pytest.mark.parametrize("fail_open", [True, False])
@pytest.mark.parametrize(
    "answer",
    [
        pytest.param([], id="no-decisions"),
        pytest.param([ALLOW], id="fewer-decisions"),
        pytest.param([DENY], id="fewer-decisions-one-denied"),
        pytest.param([ALLOW, ALLOW, ALLOW], id="more-decisions"),
        pytest.param(None, id="none"),
        pytest.param(ALLOW, id="one-decision-not-a-list"),
        pytest.param([ALLOW, (True, 10, 9, 6000, 0)], id="plain-tuple"),
        pytest.param([ALLOW, RateLimitDecision(True, 10, None, 0)], id="remaining-none"),  # type: ignore[arg-type]
        pytest.param([ALLOW, RateLimitDecision("no", 10, 0, 0)], id="allowed-not-bool"),  # type: ignore[arg-type]
        pytest.param([DENY, RateLimitDecision(False, 10, 0, 0, 1.5)], id="retry-after-float"),  # type: ignore[arg-type]
    ],
)
async def test_a_malformed_answer_gets_the_tier_policy(answer: object, fail_open: bool) -> None:
    """An answer that is not one well-formed decision per hit is a store failure: each
    tier's fail_open answers, never a 500 nor a 429 built from a missing tier."""
    response, observer = await _through_http(AnsweringStore(answer), fail_open)
    _expect_policy(response, observer, fail_open)


@pytest.mark.anyio
async def test_store_failures_are_logged_with_their_type(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The warning names the exception type, so an operator sees a client library's bug."""
    monkeypatch.setattr(
        ratelimit_middleware,
        "store_failures",
        ThrottledLogger(logging.getLogger("bastion.ratelimit")),
    )
    with caplog.at_level(logging.WARNING, logger="bastion.ratelimit"):
        await _through_http(AnsweringStore([ALLOW]), True)
    [record] = caplog.records
    assert "StoreError" in record.getMessage()
    assert record.exc_info is not None
