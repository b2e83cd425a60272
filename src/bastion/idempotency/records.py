"""The stored form of a response: status, replayable headers and body as one bytes value."""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["NOT_REPLAYED", "StoredResponse"]

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


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    @classmethod
    def capture(
        cls, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> StoredResponse:
        kept = []
        for name, value in headers:
            name = name.lower()
            if name not in NOT_REPLAYED:
                kept.append((name, value))
        return cls(status, tuple(kept), body)

    def encode(self) -> bytes:
        """A compact binary form: version, status, length-prefixed headers, then the body."""
        parts = [_HEAD.pack(_VERSION, self.status, len(self.headers))]
        for name, value in self.headers:
            parts.append(_FIELD.pack(len(name), len(value)))
            parts.append(name)
            parts.append(value)
        parts.append(self.body)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> StoredResponse:
        """The response ``encode`` wrote; ValueError for anything else (another format
        version, truncated or foreign bytes)."""
        try:
            version, status, count = _HEAD.unpack_from(data)
            if version != _VERSION:
                raise ValueError(f"unknown stored response format {version}")
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
