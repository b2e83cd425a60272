"""The stored form of a response: status, replayable headers and body as one bytes value."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

__all__ = ["NOT_REPLAYED", "TRACE_SIZE", "StoredResponse", "encode_response"]

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
_TRACED = 3
"""Format 3 is format 2 with `TRACE_SIZE` bytes of trace context after the head. It is
written only for a response stored while a trace was recorded, so that untraced records stay
as small as before and readable by instances that know format 2 only."""
TRACE_SIZE = 25
"""A trace context: trace id (16 bytes), span id (8) and trace flags (1), as in traceparent."""
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
    trace: bytes | None = None,
) -> bytes:
    """The stored form of a response: version, status, length-prefixed headers, then the body.

    By default only the replayable headers, lower-cased (not `NOT_REPLAYED`): what the
    middleware stores of a response the app sent. ``trace`` is the trace context of the
    request that produced it (`TRACE_SIZE` bytes), so that its replays can link to it.
    """
    if trace is not None and len(trace) != TRACE_SIZE:
        raise ValueError(f"a trace context is {TRACE_SIZE} bytes, not {len(trace)}")
    parts = [b"", b""] if trace is None else [b"", trace]
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
    parts[0] = _HEAD.pack(_VERSION if trace is None else _TRACED, status, count)
    parts.append(body)
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    trace: bytes | None = None
    """The trace context of the request that produced the response, when it was traced."""

    def encode(self) -> bytes:
        """The stored form, every header kept as it is."""
        return encode_response(
            self.status, self.headers, self.body, replayable_only=False, trace=self.trace
        )

    @classmethod
    def decode(cls, data: bytes) -> StoredResponse:
        """The response ``encode`` wrote, in format 3, 2 or 1; ValueError for anything else
        (an unknown format version, truncated or foreign bytes)."""
        if data[:1] == _VERSION_1:
            return cls._decode_v1(data)
        try:
            version, status, count = _HEAD.unpack_from(data)
            if version != _VERSION and version != _TRACED:
                raise ValueError(f"unknown stored response format {version}")
            if not 100 <= status <= 599:
                raise ValueError(f"stored response has status {status}")
            offset = _HEAD.size
            trace = None
            if version == _TRACED:
                offset += TRACE_SIZE
                trace = data[_HEAD.size : offset]
                if len(trace) != TRACE_SIZE:
                    raise ValueError("truncated stored response")
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
        return cls(status, tuple(headers), data[offset:], trace)

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
