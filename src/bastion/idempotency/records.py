"""The stored form of a response: status, replayable headers and body as one bytes value."""

from __future__ import annotations

import json
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

_VERSION = b"1"


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    @classmethod
    def capture(
        cls, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> StoredResponse:
        kept = tuple((k.lower(), v) for k, v in headers if k.lower() not in NOT_REPLAYED)
        return cls(status, kept, body)

    def encode(self) -> bytes:
        head = json.dumps(
            [self.status, [[k.decode("latin-1"), v.decode("latin-1")] for k, v in self.headers]],
            separators=(",", ":"),
        )
        return _VERSION + head.encode() + b"\n" + self.body

    @classmethod
    def decode(cls, data: bytes) -> StoredResponse:
        newline = data.index(b"\n")
        if data[:1] != _VERSION:
            raise ValueError("unknown stored response format")
        status, headers = json.loads(data[1:newline])
        return cls(
            int(status),
            tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers),
            data[newline + 1 :],
        )
