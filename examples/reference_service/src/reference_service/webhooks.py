"""Webhook signatures: HMAC-SHA256 over ``timestamp.body``, checked in constant time.

The provider sends ``Commerce-Signature: t=<unix seconds>,v1=<hex digest>`` (several ``v1``
entries are allowed while it rotates secrets). Signing the timestamp with the body means a
captured delivery cannot be replayed later with a fresh timestamp; the tolerance window
refuses old (and far-future) ones.
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["SIGNATURE_HEADER", "SignatureError", "sign", "verify"]

SIGNATURE_HEADER = "Commerce-Signature"


class SignatureError(Exception):
    """Why a delivery was refused; ``reason`` labels the failure metric."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _digest(secret: str, timestamp: str, body: bytes) -> str:
    message = timestamp.encode("ascii") + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The header value a provider would send for ``body`` (the tour and tests use it)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return f"t={ts},v1={_digest(secret, ts, body)}"


def verify(header: str | None, body: bytes, *, secret: str, tolerance: float, now: float) -> int:
    """Check a delivery; return its timestamp or raise `SignatureError`."""
    if not header:
        raise SignatureError("missing", f"the {SIGNATURE_HEADER} header is missing")
    timestamp: str | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            timestamp = value
        elif name == "v1":
            candidates.append(value)
    # ASCII digits only: str.isdigit() also takes superscripts and other scripts' digits,
    # which int() or the signing input refuse; a forged header is a 401, never a crash
    digits = timestamp is not None and timestamp.isascii() and timestamp.isdigit()
    if timestamp is None or not digits or len(timestamp) > 12 or not candidates:
        raise SignatureError(
            "malformed", f"the {SIGNATURE_HEADER} header must read t=<unix time>,v1=<hex digest>"
        )
    if abs(now - int(timestamp)) > tolerance:
        raise SignatureError(
            "stale", f"the signature's timestamp is outside the {tolerance:g} s tolerance window"
        )
    expected = _digest(secret, timestamp, body).encode()
    # compare every candidate, so the time taken does not tell which one was close
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate.encode("ascii", "replace"))
    if not matched:
        raise SignatureError("mismatch", "the signature does not match the body")
    return int(timestamp)
