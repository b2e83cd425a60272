"""What makes two requests "the same request" for one key."""

from __future__ import annotations

import hashlib
import struct

from bastion._paths import normal_method, normal_path

__all__ = ["fingerprint", "normal_fingerprint"]

_LENGTHS = struct.Struct(">4Q")


def fingerprint(method: str, path: str, query: bytes, body: bytes) -> str:
    """A digest of method, path, query and body.

    Method and path are taken in the form routers match them (`bastion._paths`): ``post
    //pay/`` runs the same handler as ``POST /pay``, so a retry spelled either way is the same
    request and gets the replay, not a 422. Each part is length-prefixed, so no choice of path
    and body can collide with another split of the same bytes.
    """
    return normal_fingerprint(normal_method(method), normal_path(path), query, body)


def normal_fingerprint(method: str, path: str, query: bytes, body: bytes) -> str:
    """`fingerprint` of a method and path already in their normal form (the middleware has
    them so, and normalising again would cost a tenth of this)."""
    m = method.encode()
    p = path.encode("utf-8", "surrogateescape")
    framed = _LENGTHS.pack(len(m), len(p), len(query), len(body))
    return hashlib.sha256(b"".join((framed, m, p, query, body))).hexdigest()
