"""Idempotency keys: at-most-once execution of keyed requests, with byte-exact replays."""

from bastion.idempotency.middleware import IdempotencyMiddleware

__all__ = ["IdempotencyMiddleware"]
