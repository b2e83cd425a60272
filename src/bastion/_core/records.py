"""The stored form of a response: status, replayable headers and body as one bytes value."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

__all__ = ["NOT_REPLAYED", "StoredResponse", "encode_response"]

NOT_REPLAYED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"set-cookie",
        b"date",
        b"server",
    }
)
"""Hop-by-hop fields, cookies (a replay must never hand a session to a retry) and the fields
the server sets afresh on every response."""

_VERSION = 2
_HEAD = struct.Struct(">BHH")
_FIELD = struct.Struct(">HI")
_VERSION_1 = b"1"
"""The first format: ``b"1"``, a JSON ``[status, [[name, value], ...]]`` of latin-1 strings, a
newline, the body. Still read, so that records written before an upgrade are replayed after
it rather than answered as unreadable."""


def encode_response(
    status: int,
    headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...],
    body: bytes,
    *,
    replayable_only: bool = True,
) -> bytes:
    """The stored form of a response: version, status, length-prefixed headers, then the body.

    By default only the replayable headers, lower-cased (not `NOT_REPLAYED`): what the
    middleware stores of a response the app sent.
    """
    parts = [b""]
    count = 0
    for name, value in headers:
        if replayable_only:
            name = name.lower()
            if name in NOT_REPLAYED:
                continue
        parts.append(_FIELD.pack(len(name), len(value)))
        parts.append(name)
        parts.append(value)
        count += 1
    parts[0] = _HEAD.pack(_VERSION, status, count)
    parts.append(body)
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def encode(self) -> bytes:
        """The stored form, every header kept as it is."""
        return encode_response(self.status, self.headers, self.body, replayable_only=False)

    @classmethod
    def decode(cls, data: bytes) -> StoredResponse:
        """The response ``encode`` wrote, in this format or the previous one; ValueError for
        anything else (an unknown format version, truncated or foreign bytes)."""
        if data[:1] == _VERSION_1:
            return cls._decode_v1(data)
        try:
            version, status, count = _HEAD.unpack_from(data)
            if version != _VERSION:
                raise ValueError(f"unknown stored response format {version}")
            if not 100 <= status <= 599:
                raise ValueError(f"stored response has status {status}")
            offset = _HEAD.size
            headers = []
            for _ in range(count):
                name_length, value_length = _FIELD.unpack_from(data, offset)
                offset += _FIELD.size
                name = data[offset : offset + name_length]
                offset += name_length
                value = data[offset : offset + value_length]
                offset += value_length
                if len(name) != name_length or len(value) != value_length:
                    raise ValueError("truncated stored response")
                headers.append((name, value))
        except struct.error as exc:
            raise ValueError(f"truncated stored response: {exc}") from None
        return cls(status, tuple(headers), data[offset:])

    @classmethod
    def _decode_v1(cls, data: bytes) -> StoredResponse:
        newline = data.find(b"\n")
        if newline < 0:
            raise ValueError("truncated stored response (format 1)")
        try:
            status, fields = json.loads(data[1:newline])
            headers = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in fields)
        except (ValueError, TypeError, AttributeError, RecursionError) as exc:
            raise ValueError(f"unreadable stored response (format 1): {exc!r}") from None
        if type(status) is not int or not 100 <= status <= 599:
            raise ValueError(f"stored response (format 1) has status {status!r}")
        return cls(status, headers, data[newline + 1 :])
