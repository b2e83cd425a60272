"""The handler's view of its own keyed request, shared with stores that join its transaction."""

from __future__ import annotations

from bastion.idempotency._settings import IdempotencySettings
from bastion.stores._protocols import IdempotencyStore

__all__ = ["SCOPE_KEY", "IdempotencyContext"]

SCOPE_KEY = "bastion.idempotency"


class IdempotencyContext:
    """What a handler may know about its own keyed request, at ``scope["bastion.idempotency"]``.

    A store that can join the handler's own transaction (the SQL store) uses ``key`` and
    ``token`` to write the response in that transaction and then sets ``completed``, so the
    middleware does not write it a second time. ``store`` and ``settings`` are the
    middleware's, so such a helper writes to the store holding the lease, with the same TTL
    and the same rule for which responses are kept (``settings.keeps``). It puts what it
    stored in ``response``, so the middleware can check that it sent the same response.
    ``trace`` is the request's trace context, stored with the response so that its replays
    link to this request's span (None when no trace is recorded).
    """

    __slots__ = (
        "completed",
        "fingerprint",
        "key",
        "response",
        "settings",
        "store",
        "token",
        "trace",
    )

    def __init__(
        self,
        key: str,
        token: str,
        fingerprint: str,
        *,
        store: IdempotencyStore | None = None,
        settings: IdempotencySettings | None = None,
    ) -> None:
        self.key = key
        self.token = token
        self.fingerprint = fingerprint
        self.store = store
        self.settings = settings or IdempotencySettings()
        self.completed = False
        self.response: bytes | None = None
        self.trace: bytes | None = None


SCOPE_KEY = "bastion.idempotency"
