"""Formatting of the draft -11 RateLimit-Policy and RateLimit fields."""

from __future__ import annotations

import pytest

from bastion.ratelimit._headers import limit_prefix, policy_item, rate_fields, seconds, sf_string


def test_policy_item_is_an_sf_string_with_quota_and_window() -> None:
    """A policy item reads ``"name";q=<quota>;w=<window seconds>``."""
    assert policy_item("burst", 100, 60) == b'"burst";q=100;w=60'


def test_sf_string_escapes_quotes_and_backslashes() -> None:
    """Quotes and backslashes are escaped; anything outside printable ASCII is refused."""
    assert sf_string('a"b\\c') == b'"a\\"b\\\\c"'
    for bad in ("caf\u00e9", "tab\there", "line\n"):
        with pytest.raises(ValueError, match="Structured Field"):
            sf_string(bad)


def test_seconds_round_up() -> None:
    """Waits are rounded up to whole seconds so a client never returns too early."""
    assert [seconds(ms) for ms in (0, 1, 999, 1000, 1001)] == [0, 1, 1, 1, 2]


def test_fields_order_limits_by_restrictiveness_and_keep_policy_order() -> None:
    """RateLimit leads with the least remaining (then the longest wait); the policy list keeps
    the order it was given."""
    policy = b", ".join([policy_item("daily", 5000, 86400), policy_item("burst", 100, 60)])
    items = [
        (4963, 80000, limit_prefix("daily"), 5000),
        (37, 42, limit_prefix("burst"), 100),
        (37, 50, limit_prefix("other"), 100),
    ]
    fields = dict(rate_fields(policy, items, legacy=False))
    assert fields[b"ratelimit-policy"] == b'"daily";q=5000;w=86400, "burst";q=100;w=60'
    assert fields[b"ratelimit"] == (b'"other";r=37;t=50, "burst";r=37;t=42, "daily";r=4963;t=80000')
    assert b"x-ratelimit-limit" not in fields


def test_legacy_fields_describe_the_first_item() -> None:
    """X-RateLimit-Limit/Remaining/Reset carry the most restrictive tier's numbers."""
    items = [(10, 5, limit_prefix("a"), 50), (2, 30, limit_prefix("b"), 3)]
    fields = dict(rate_fields(b"p", items, legacy=True))
    assert fields[b"x-ratelimit-limit"] == b"3"
    assert fields[b"x-ratelimit-remaining"] == b"2"
    assert fields[b"x-ratelimit-reset"] == b"30"
