"""The rate-limit response fields of ``draft-ietf-httpapi-ratelimit-headers-11``.

Both fields are Structured Field lists of items named by a policy (a tier):

    RateLimit-Policy: "burst";q=100;w=60, "daily";q=5000;w=86400
    RateLimit: "burst";r=37;t=42, "daily";r=4963;t=80000

``q`` is the quota, ``w`` the window in seconds, ``r`` the quota left and ``t`` the seconds
until more quota is available (draft -10 on), 0 when the quota is whole. ``RateLimit`` items
are ordered most restrictive first (the least quota left, then the longest wait), so a client
reading only the first item reads the one that will stop it; ``RateLimit-Policy`` keeps the
tiers' declared order, as the draft wants that field to stay the same from one response to
the next. The legacy
``X-RateLimit-Limit/Remaining/Reset`` fields, when enabled, describe that first item (``Reset``
in seconds from now, like ``t``).

Every policy item is formatted once at start-up; a request only joins bytes.
"""

from __future__ import annotations

__all__ = [
    "LimitItem",
    "limit_prefix",
    "policy_item",
    "rate_fields",
    "seconds",
    "sf_string",
]

RATELIMIT_POLICY = b"ratelimit-policy"
RATELIMIT = b"ratelimit"
RETRY_AFTER = b"retry-after"
LEGACY_LIMIT = b"x-ratelimit-limit"
LEGACY_REMAINING = b"x-ratelimit-remaining"
LEGACY_RESET = b"x-ratelimit-reset"

LimitItem = tuple[int, int, bytes, int]
"""(remaining, seconds, `limit_prefix` of the policy, quota): one tier's state in a response.
Seconds below 0 leave ``t`` out: a concurrency limit cannot say when a slot frees."""


def sf_string(value: str) -> bytes:
    """An RFC 8941 sf-string: printable ASCII in quotes, ``"`` and ``\\`` escaped."""
    if not value.isascii() or not value.isprintable():
        raise ValueError(f"{value!r} cannot be a Structured Field string")
    return b'"' + value.replace("\\", "\\\\").replace('"', '\\"').encode("ascii") + b'"'


def policy_item(name: str, quota: int, window: int | None, unit: str | None = None) -> bytes:
    """One ``RateLimit-Policy`` item: ``"name";q=quota;w=window``, with ``qu="unit"`` after
    ``q`` unless the unit is the draft's default (``requests``), and no ``w`` for a quota
    with no time window (concurrent requests)."""
    item = sf_string(name) + b";q=%d" % quota
    if unit is not None and unit != "requests":
        item += b";qu=" + sf_string(unit)
    if window is not None:
        item += b";w=%d" % window
    return item


def seconds(milliseconds: int) -> int:
    """Whole seconds, rounded up: a client told to wait must never come back too early."""
    return -(-milliseconds // 1000)


def limit_prefix(name: str) -> bytes:
    """The start of a ``RateLimit`` item, ``"name";r=``, formatted once per tier."""
    return sf_string(name) + b";r="


def rate_fields(
    policy: bytes, items: list[LimitItem], *, legacy: bool
) -> list[tuple[bytes, bytes]]:
    """The response fields: the ``policy`` value as given, ``items`` most restrictive first."""
    if len(items) == 2 and items[0][1] >= 0 and items[1][1] >= 0:  # the common case
        first, second = items
        if second[0] < first[0] or (second[0] == first[0] and second[1] > first[1]):
            first, second = items[0], items[1] = second, first
        limits = b"%s%d;t=%d, %s%d;t=%d" % (
            first[2],
            first[0],
            first[1],
            second[2],
            second[0],
            second[1],
        )
    else:
        items.sort(key=_restrictive)
        limits = b", ".join(
            [
                b"%s%d;t=%d" % (item[2], item[0], item[1])
                if item[1] >= 0
                else b"%s%d" % (item[2], item[0])
                for item in items
            ]
        )
    fields = [(RATELIMIT_POLICY, policy), (RATELIMIT, limits)]
    if legacy:
        remaining, wait, _, quota = items[0]
        fields += [
            (LEGACY_LIMIT, b"%d" % quota),
            (LEGACY_REMAINING, b"%d" % remaining),
            (LEGACY_RESET, b"%d" % max(0, wait)),
        ]
    return fields


def _restrictive(item: LimitItem) -> tuple[int, int]:
    return item[0], -item[1]
