"""Costs: how much of a tier's quota one request spends.

A tier's ``cost`` is an integer (the same for every request) or one of these, computed per
request: `content_length` (the body's size, quota unit ``content-bytes``), `header` (a number
the client or a gateway sends) or `custom` (any function of the `RequestView`). A cost is an
integer of at least 0; one larger than the tier's limit can never fit, and is refused with 429
like any request that does not fit. Bad input is the client's error: a cost header that is not
a number is answered 400, and a body too large to measure (sent without ``Content-Length``
and longer than ``RateLimitSettings.max_body_bytes``) 413, never a 500.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

from bastion.exceptions import ConfigurationError
from bastion.ratelimit.keys import RequestView

__all__ = ["Cost", "InvalidCost", "content_length", "custom", "header"]

MAX_COST_DIGITS: Final = 18


class InvalidCost(ValueError):
    """Raised by a cost function for a request whose cost it cannot read; answered with 400
    and the exception's message as the problem's detail."""


class BodyNotMeasurable(InvalidCost):
    """The body came without ``Content-Length`` and is longer than the middleware buffers;
    answered with 413."""


class Cost(Protocol):
    """A request's cost in a tier's quota units; ``unit`` names them for ``qu`` (None: the
    draft's default, requests) and ``needs_body`` makes the middleware buffer the body."""

    @property
    def unit(self) -> str | None: ...

    @property
    def needs_body(self) -> bool: ...

    def __call__(self, request: RequestView, /) -> int: ...


class _ContentLength:
    __slots__ = ()
    unit = "content-bytes"
    needs_body = True

    def __call__(self, request: RequestView) -> int:
        declared = request.header(b"content-length")
        if declared is not None:
            declared = declared.strip()
            if not declared.isdigit() or len(declared) > MAX_COST_DIGITS:
                raise InvalidCost("Content-Length is not a number")
            return int(declared)
        body = request.body
        if body is None:
            raise BodyNotMeasurable(
                "the body is too large to measure without Content-Length; send Content-Length"
            )
        return len(body)

    def __repr__(self) -> str:
        return "content_length()"


def content_length() -> Cost:
    """The request body's size in bytes (``qu="content-bytes"``): the declared
    ``Content-Length``, or, without one, the size of the body read up to
    ``RateLimitSettings.max_body_bytes`` (a longer body without it is answered 413)."""
    return _ContentLength()


class _Header:
    __slots__ = ("default", "name", "unit")
    needs_body = False

    def __init__(self, name: str, default: int, unit: str | None) -> None:
        self.name = name.lower().encode("latin-1")
        self.default = default
        self.unit = unit

    def __call__(self, request: RequestView) -> int:
        raw = request.header(self.name)
        if raw is None:
            return self.default
        raw = raw.strip()
        if not raw.isdigit() or len(raw) > MAX_COST_DIGITS:
            raise InvalidCost(f"{self.name.decode()} must be a whole number of at least 0")
        return int(raw)


def header(name: str, *, default: int = 1, unit: str | None = None) -> Cost:
    """The integer in request header ``name`` (``default`` when absent; 400 when it is not a
    whole number). Trust it only where a gateway, not the client, sets it, or a client picks
    what it pays."""
    if not name or not name.isascii():
        raise ConfigurationError(f"header name {name!r} must be non-empty ASCII")
    if isinstance(default, bool) or not isinstance(default, int) or default < 0:
        raise ConfigurationError("default must be an integer >= 0")
    return _Header(name, default, unit)


class _Custom:
    __slots__ = ("function", "needs_body", "unit")

    def __init__(
        self, function: Callable[[RequestView], int], unit: str | None, needs_body: bool
    ) -> None:
        self.function = function
        self.unit = unit
        self.needs_body = needs_body

    def __call__(self, request: RequestView) -> int:
        cost = self.function(request)
        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 0:
            raise TypeError(f"cost function {self.function!r} returned {cost!r}, not an int >= 0")
        return cost


def custom(
    function: Callable[[RequestView], int], *, unit: str | None = None, needs_body: bool = False
) -> Cost:
    """Any function of the `RequestView` returning an integer >= 0 (raise `InvalidCost` for
    a request whose cost cannot be told: it is answered 400). ``needs_body`` makes
    ``RequestView.body`` and ``RequestView.json`` available to it."""
    if not callable(function):
        raise ConfigurationError("a custom cost must be callable")
    return _Custom(function, unit, needs_body)
