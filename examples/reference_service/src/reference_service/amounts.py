"""Token amounts: decimal strings on the wire, integer micro-units in the database.

Floats never carry money here: ``0.1 + 0.2`` is not ``0.3`` in binary floating point, and a
JSON number may be read as one by any client on the way. An amount is a string like
``"12.5"`` with at most `DECIMALS` digits after the point; the database holds it as an
integer count of the smallest unit, so sums are exact on every database.
"""

from __future__ import annotations

import re
from decimal import Decimal

__all__ = ["AMOUNT_PATTERN", "DECIMALS", "MAX_UNITS", "format_units", "to_units"]

DECIMALS = 6
UNIT = 10**DECIMALS
MAX_UNITS = 10**15 * UNIT
"""A quadrillion tokens: far beyond any budget, and well inside a signed 64-bit column."""
AMOUNT_PATTERN = rf"^(0|[1-9][0-9]{{0,14}})(\.[0-9]{{1,{DECIMALS}}})?$"
_AMOUNT = re.compile(AMOUNT_PATTERN)


def to_units(amount: str | Decimal) -> int:
    """Integer micro-units of a decimal amount; ValueError when it is not a valid amount."""
    text = amount if isinstance(amount, str) else format(amount, "f")
    if not _AMOUNT.fullmatch(text):
        raise ValueError(
            f'an amount is a decimal string with at most {DECIMALS} decimals, e.g. "12.5"'
        )
    whole, _, fraction = text.partition(".")
    units: int = int(whole) * UNIT + int(fraction.ljust(DECIMALS, "0") or "0")
    return units


def format_units(units: int) -> str:
    """The decimal string of an integer amount of micro-units, without trailing zeros."""
    sign = "-" if units < 0 else ""
    whole, fraction = divmod(abs(units), UNIT)
    text = f"{fraction:0{DECIMALS}d}".rstrip("0")
    return f"{sign}{whole}.{text}" if text else f"{sign}{whole}"
