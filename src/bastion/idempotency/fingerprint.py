"""What makes two requests "the same request" for one key."""

from __future__ import annotations

import hashlib

__all__ = ["fingerprint"]


def fingerprint(method: str, path: str, query: bytes, body: bytes) -> str:
    """A digest of method, path, query and body.

    Each part is length-prefixed, so no choice of path and body can collide with another
    split of the same bytes.
    """
    h = hashlib.sha256()
    for part in (method.encode(), path.encode("utf-8", "surrogateescape"), query, body):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()
