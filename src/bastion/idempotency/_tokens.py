"""Fencing tokens: unique per claim in every process, forked workers included."""

from __future__ import annotations

import itertools
import os

__all__ = ["new_token"]

_PROCESS_NONCE = ""
_SEQUENCE = itertools.count()


def _reseed() -> None:
    """A fresh nonce and count for this process. Run at import and again in every forked
    child: a worker forked after import (``gunicorn --preload``, any pre-fork server) would
    otherwise repeat its parent's and its siblings' tokens, and a stale holder's release or
    completion could then pass another request's fence."""
    global _PROCESS_NONCE, _SEQUENCE
    _PROCESS_NONCE = os.urandom(12).hex()
    _SEQUENCE = itertools.count()


_reseed()
if hasattr(os, "register_at_fork"):  # POSIX; elsewhere every worker imports afresh
    os.register_at_fork(after_in_child=_reseed)


def new_token() -> str:
    """A fencing token unique to this claim: 96 random bits for the process, then a count.

    Tokens only have to differ between claims, never be secret; this is a third of the cost
    of fresh random bytes per request."""
    return f"{_PROCESS_NONCE}{next(_SEQUENCE):x}"
