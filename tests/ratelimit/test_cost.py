"""Costs: a tier charges a static or computed cost per request, and names its quota unit."""

from __future__ import annotations

from typing import Any

import pytest

from bastion import Tier
from bastion.exceptions import ConfigurationError
from bastion.ratelimit import costs
from bastion.ratelimit.keys import RequestView
from tests.ratelimit.conftest import call, client, fields, limited
from tests.ratelimit.feature_stores import any_store

pytestmark = pytest.mark.anyio
__all__ = ["any_store"]


async def test_body_size_is_charged_in_content_bytes(any_store: Any) -> None:
    """A content-length cost spends the body's bytes and says ``qu="content-bytes"``."""
    tier = Tier(
        name="upload", limit=100, window=60, algorithm="fixed_window", cost=costs.content_length()
    )
    app = limited(tier, store=any_store)
    async with client(app) as http:
        first = await http.post("/", content=b"x" * 60)
        second = await http.post("/", content=b"x" * 50)
        third = await http.post("/", content=b"x" * 40)
    assert [first.status_code, second.status_code, third.status_code] == [200, 429, 200]
    assert first.headers["ratelimit-policy"] == '"upload";q=100;qu="content-bytes";w=60'
    assert first.headers["ratelimit"].startswith('"upload";r=40;')
    assert third.headers["ratelimit"].startswith('"upload";r=0;')
    assert any_store.calls == ["hit", "hit", "hit"]


async def test_a_chunked_body_is_measured_and_one_too_large_is_413() -> None:
    """Without Content-Length the body is read and measured, up to max_body_bytes; a longer
    one is answered 413 rather than guessed."""
    tier = Tier(name="upload", limit=1000, window=60, cost=costs.content_length())
    app = limited(tier, max_body_bytes=10)
    status, headers, body = await call(app, method="POST", body=[b"abc", b"de"])
    assert status == 200
    assert fields(headers)["ratelimit"].startswith('"upload";r=995;')
    assert b'"body": "abcde"' in body
    status, headers, _ = await call(app, method="POST", body=[b"x" * 8, b"y" * 8])
    assert status == 413
    assert fields(headers)["content-type"] == "application/problem+json"


async def test_a_header_cost_and_its_bad_values(any_store: Any) -> None:
    """A header cost charges its number, the default without it, and 400 for anything else;
    a cost beyond the limit is refused, never an error (on Redis too)."""
    tier = Tier(name="tokens", limit=10, window=60, cost=costs.header("x-tokens", default=2))
    app = limited(tier, store=any_store)
    async with client(app) as http:
        assert (
            (await http.get("/", headers={"x-tokens": "7"}))
            .headers["ratelimit"]
            .startswith('"tokens";r=3;')
        )
        assert (await http.get("/")).headers["ratelimit"].startswith('"tokens";r=1;')
        bad = await http.get("/", headers={"x-tokens": "-1"})
        huge = await http.get("/", headers={"x-tokens": "9" * 18})
    assert bad.status_code == 400
    assert bad.headers["content-type"] == "application/problem+json"
    assert huge.status_code == 429


async def test_a_custom_cost_and_a_custom_unit() -> None:
    """A callable cost sees the request; a custom unit is written as ``qu``."""

    def per_item(request: RequestView) -> int:
        return len(request.json["items"])

    tier = Tier(
        name="batch",
        limit=10,
        window=60,
        cost=costs.custom(per_item, needs_body=True, unit="items"),
    )
    app = limited(tier)
    async with client(app) as http:
        response = await http.post("/", json={"items": [1, 2, 3]})
    assert response.headers["ratelimit-policy"] == '"batch";q=10;qu="items";w=60'
    assert response.headers["ratelimit"].startswith('"batch";r=7;')


def test_cost_and_unit_are_checked_at_start_up() -> None:
    """A cost that is neither an int nor a cost function, or a malformed unit, is refused."""
    with pytest.raises(ConfigurationError):
        Tier(name="t", limit=1, window=1, cost="3")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        Tier(name="t", limit=1, window=1, unit='bad"unit')
    with pytest.raises(ConfigurationError):
        costs.header("x-cost", default=-1)
