"""A strict parser for Structured Field lists (RFC 9651, which obsoletes RFC 8941).

The kit judges a server's fields, so it must not be lenient where the RFC is strict: a value
the RFC says to reject is reported as the server's error, not quietly read. Lists only, as
the rate-limit fields are lists; a bare item, an inner list, a byte sequence, a boolean, a
date and a display string are all parsed, so a well-formed field of another shape fails on
what it means, not on how it is spelt.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from decimal import Decimal

__all__ = ["Item", "SFError", "Token", "parse_list"]

BareItem = int | Decimal | str | bytes | bool

_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


class SFError(ValueError):
    """The field is not a valid Structured Field list; the message says where and why."""


class Token(str):
    """An sf-token, told apart from an sf-string of the same text."""

    __slots__ = ()


@dataclass(frozen=True)
class Item:
    """One list member: a bare item (or an inner list of items) with its parameters."""

    value: BareItem | tuple[Item, ...]
    params: dict[str, BareItem] = field(default_factory=dict)


class _Parser:
    def __init__(self, text: str) -> None:
        if not text.isascii():
            raise SFError("a structured field is ASCII only")
        self.text = text
        self.at = 0

    def fail(self, why: str) -> SFError:
        return SFError(f"{why} at character {self.at} of {self.text!r}")

    def peek(self) -> str:
        return self.text[self.at : self.at + 1]

    def skip(self, chars: str) -> None:
        while self.peek() and self.peek() in chars:
            self.at += 1

    def parse_list(self) -> list[Item]:
        self.skip(" ")
        members: list[Item] = []
        while self.at < len(self.text):
            members.append(self.inner_list() if self.peek() == "(" else self.item())
            self.skip(" \t")
            if self.at >= len(self.text):
                return members
            if self.peek() != ",":
                raise self.fail("expected ',' between list members")
            self.at += 1
            self.skip(" \t")
            if self.at >= len(self.text):
                raise self.fail("a list cannot end with ','")
        return members

    def inner_list(self) -> Item:
        self.at += 1
        items: list[Item] = []
        while True:
            self.skip(" ")
            if self.peek() == ")":
                self.at += 1
                return Item(tuple(items), self.params())
            items.append(self.item())
            if self.peek() not in (" ", ")"):
                raise self.fail("expected ' ' or ')' in an inner list")

    def item(self) -> Item:
        return Item(self.bare(), self.params())

    def params(self) -> dict[str, BareItem]:
        found: dict[str, BareItem] = {}
        while self.peek() == ";":
            self.at += 1
            self.skip(" ")
            key = self.key()
            value: BareItem = True
            if self.peek() == "=":
                self.at += 1
                value = self.bare()
            found[key] = value
        return found

    def key(self) -> str:
        match = _KEY.match(self.text, self.at)
        if match is None:
            raise self.fail("expected a key (lower case)")
        self.at = match.end()
        return match.group()

    def bare(self) -> BareItem:
        char = self.peek()
        if char == '"':
            return self.string()
        if char == ":":
            return self.bytes_()
        if char == "?":
            value = self.text[self.at + 1 : self.at + 2]
            if value not in ("0", "1"):
                raise self.fail("a boolean is ?0 or ?1")
            self.at += 2
            return value == "1"
        if char == "-" or char.isdigit():
            return self.number()
        match = _TOKEN.match(self.text, self.at)
        if match is None:
            raise self.fail("expected an item")
        self.at = match.end()
        return Token(match.group())

    def number(self) -> int | Decimal:
        match = _NUMBER.match(self.text, self.at)
        if match is None:
            raise self.fail("expected a number")
        text = match.group()
        whole = text.lstrip("-").split(".")[0]
        if match.group(1) is None:
            if len(whole) > 15:
                raise self.fail("an integer has at most 15 digits")
            self.at = match.end()
            return int(text)
        if len(whole) > 12 or len(match.group(1)) > 4:
            raise self.fail("a decimal has at most 12 integer and 3 fraction digits")
        self.at = match.end()
        return Decimal(text)

    def string(self) -> str:
        self.at += 1
        out: list[str] = []
        while self.at < len(self.text):
            char = self.text[self.at]
            self.at += 1
            if char == "\\":
                escaped = self.text[self.at : self.at + 1]
                if escaped not in ('"', "\\"):
                    raise self.fail('only \\" and \\\\ may be escaped in a string')
                out.append(escaped)
                self.at += 1
            elif char == '"':
                return "".join(out)
            elif not " " <= char <= "~":
                raise self.fail("a string holds printable ASCII only")
            else:
                out.append(char)
        raise self.fail("unterminated string")

    def bytes_(self) -> bytes:
        end = self.text.find(":", self.at + 1)
        if end < 0:
            raise self.fail("unterminated byte sequence")
        try:
            value = base64.b64decode(self.text[self.at + 1 : end], validate=True)
        except ValueError:
            raise self.fail("a byte sequence is base64") from None
        self.at = end + 1
        return value


def parse_list(text: str) -> list[Item]:
    """The members of a Structured Field list, or `SFError` saying why it is not one."""
    return _Parser(text).parse_list()
