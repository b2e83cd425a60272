"""Idempotency keys: at-most-once execution of keyed requests, with byte-exact replays.

`transaction` and `IdempotentTransaction` (a handler's rows and its stored response in one
commit, with a `SQLStore`) are imported on first use, as they need SQLAlchemy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any as _Any

from bastion.idempotency._context import SCOPE_KEY, IdempotencyContext
from bastion.idempotency._keys import default_principal
from bastion.idempotency._middleware import IdempotencyMiddleware
from bastion.idempotency._settings import IdempotencySettings

if TYPE_CHECKING:
    from bastion.idempotency._transaction import IdempotentTransaction, transaction

__all__ = [
    "SCOPE_KEY",
    "IdempotencyContext",
    "IdempotencyMiddleware",
    "IdempotencySettings",
    "IdempotentTransaction",
    "default_principal",
    "transaction",
]

_LAZY = frozenset({"IdempotentTransaction", "transaction"})


def __getattr__(name: str) -> _Any:
    if name in _LAZY:
        from bastion.idempotency import _transaction

        return getattr(_transaction, name)
    raise AttributeError(f"module 'bastion.idempotency' has no attribute {name!r}")
