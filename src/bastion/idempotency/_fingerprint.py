"""What makes two requests "the same request" for one key."""

from __future__ import annotations

import hashlib
import struct

__all__ = ["fingerprint"]

_LENGTHS = struct.Struct(">4Q")


def fingerprint(method: str, path: str, query: bytes, body: bytes) -> str:
    """A digest of method, path, query and body.

    Each part is length-prefixed, so no choice of path and body can collide with another
    split of the same bytes.
    """
    parts = (method.encode(), path.encode("utf-8", "surrogateescape"), query, body)
    framed = _LENGTHS.pack(*map(len, parts))
    return hashlib.sha256(framed + b"".join(parts)).hexdigest()
