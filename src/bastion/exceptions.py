"""Every error bastion raises on purpose.

    BastionError
    ├── ConfigurationError   bad settings or a missing optional extra, raised at start-up
    │   └── MissingExtraError an optional extra is not installed (also an ImportError)
    ├── TransactionError     a handler misused bastion.idempotency.transaction
    └── StoreError           a store backend failed (timeout, lost connection, bad reply)
        ├── StoreUnavailable the backend could not be reached at all
        └── StoreCapacityError  a bounded store is full of records it must not drop

Middleware map `StoreError` to the configured fail-open or fail-closed behaviour; they never
let it escape as an unhandled 500. `StoreCapacityError` is the exception: idempotency answers it
with 503 even when failing open, since running the request unprotected could run it twice.
"""

from __future__ import annotations

__all__ = [
    "BastionError",
    "ConfigurationError",
    "MissingExtraError",
    "StoreCapacityError",
    "StoreError",
    "StoreUnavailable",
    "TransactionError",
]


class BastionError(Exception):
    """Root of bastion's own errors, so callers can catch all of them at once."""


class ConfigurationError(BastionError):
    """Settings that cannot work, or an optional extra that is not installed."""


class TransactionError(BastionError):
    """A handler used `bastion.idempotency.transaction` in a way that would break its
    guarantee: it committed on its own, left the block without ``tx.complete(response)``, or
    completed with a response that cannot be stored. The transaction is rolled back rather
    than committed."""


class StoreError(BastionError):
    """A store backend failed; the original exception is chained as ``__cause__``."""


class StoreUnavailable(StoreError):
    """The backend could not be reached (connection refused, timed out, reset)."""


class StoreCapacityError(StoreError):
    """A bounded store (`MemoryStore`) is full and everything in it must stay: every record is
    the lease of a request still running. Dropping one would let a duplicate of that request
    run, so the new claim is refused instead; it succeeds again once a lease ends."""


def missing_extra(extra: str, module: str) -> MissingExtraError:
    """The error for an optional dependency that is not installed."""
    return MissingExtraError(
        f"{module!r} is not installed: install it with `pip install 'bastion[{extra}]'`",
        extra=extra,
        name=module,
    )


class MissingExtraError(ConfigurationError, ImportError):
    """An optional extra is not installed; the message holds the ``pip install`` command.

    Raised when the feature is imported or built, never on a request. It is an `ImportError`
    too, so code that already guards optional imports with ``except ImportError`` keeps working.
    """

    def __init__(self, message: str, *, extra: str, name: str | None = None) -> None:
        super().__init__(message)
        self.extra = extra
        """The extra to install: ``pip install 'bastion[<extra>]'``."""
        self.name = name
