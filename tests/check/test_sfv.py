"""The kit's Structured Field parser is as strict as RFC 9651: what it must refuse, it does."""

from __future__ import annotations

from decimal import Decimal

import pytest

from bastion.check._sfv import Item, SFError, Token, parse_list


def test_parses_the_rate_limit_fields() -> None:
    """Named policies with integer parameters, a unit string, tokens, decimals and booleans."""
    assert parse_list('"burst";q=100;qu="content-bytes";w=60, "daily";q=5000;w=86400') == [
        Item("burst", {"q": 100, "qu": "content-bytes", "w": 60}),
        Item("daily", {"q": 5000, "w": 86400}),
    ]
    (item,) = parse_list('tok;a=1.5;b;c=?0, ("x" 2);d=-3')[:1]
    assert isinstance(item.value, Token)
    assert item.params == {"a": Decimal("1.5"), "b": True, "c": False}
    assert parse_list('a, ("x" 2);d=-3')[1] == Item((Item("x"), Item(2)), {"d": -3})
    assert parse_list("") == []
    # valid syntax of the wrong type is left to the checks, which refuse a token for r
    assert parse_list('"burst";r=x')[0].params == {"r": Token("x")}


@pytest.mark.parametrize(
    "text",
    [
        '"burst";r=1,',  # trailing comma
        '"burst" "daily"',  # no comma
        '"burst";R=1',  # upper-case key
        '"burst";r=1234567890123456',  # 16 digits
        '"burst";r=1.2345',  # 4 fraction digits
        '"un\\terminated',  # bad escape
        '"open',  # no closing quote
        "?2",
        ":not base64!:",
        "é",
    ],
)
def test_refuses_what_the_rfc_refuses(text: str) -> None:
    """Each malformed field raises `SFError` naming where it went wrong."""
    with pytest.raises(SFError):
        parse_list(text)
