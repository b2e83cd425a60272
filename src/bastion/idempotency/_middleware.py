"""`IdempotencyMiddleware`: a request carrying an ``Idempotency-Key`` runs at most once."""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import translate

from bastion._asgi import (
    ANSWERED_SCOPE_KEY,
    BodyTooLarge,
    ClientDisconnected,
    read_body,
    replay_message,
    send_problem,
)
from bastion._paths import normal_method, normal_path
from bastion.exceptions import ConfigurationError
from bastion.idempotency._keys import (
    InvalidKey,
    default_principal,
    key_header,
    parse_key,
)
from bastion.idempotency._lease import LeaseRegistry
from bastion.idempotency._quota import QUOTA_GATE_KEY, settle
from bastion.idempotency._request import KeyedRequest
from bastion.idempotency._settings import IdempotencySettings
from bastion.observe import NULL_OBSERVER, IdempotencyOutcome, Observer
from bastion.stores._protocols import IdempotencyStore
from bastion.typing import ASGIApp, PrincipalExtractor, Receive, Scope, Send

__all__ = ["IdempotencyMiddleware"]


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{translate(p)})" for p in patterns))


class IdempotencyMiddleware:
    """Stores the first response to each key and replays it to every retry.

    The first request takes a lease on its key; duplicates that arrive while it runs get 409
    (or wait, with ``settings.wait``); the same key with another body or route gets 422. The
    handler's response is stored unless it is a server error, too large, or the handler raised
    before sending all of it, in which case the key is released so a retry runs again.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: IdempotencyStore,
        settings: IdempotencySettings | None = None,
        principal: PrincipalExtractor = default_principal,
        observer: Observer = NULL_OBSERVER,
    ) -> None:
        if not isinstance(store, IdempotencyStore):
            raise ConfigurationError(
                f"{type(store).__name__} does not implement the idempotency store protocol"
            )
        self.app = app
        self.store = store
        self.settings = settings = settings or IdempotencySettings()
        self.principal = principal
        self.observer = observer
        self._header = settings.header_name.lower().encode("latin-1")
        # patterns are matched against normalised paths (bastion._paths), so written that way
        include = tuple(map(normal_path, settings.include))
        self._include = None if include == ("*",) else _compile(include)
        self._exclude = _compile(tuple(map(normal_path, settings.exclude)))
        self._require = _compile(tuple(map(normal_path, settings.require_key)))
        self._lease_ms = int(settings.lease_seconds * 1000)
        self._ttl_ms = int(settings.ttl_seconds * 1000)
        # shared by the requests in flight, like a connection pool: one timer renews them all
        self._leases = LeaseRegistry(settings.lease_seconds / 3)
        self._backend = store.backend
        self._shield_claims = getattr(store, "suspends", True)
        # neither a shield nor a timer to wrap the claim in: await the store's call itself
        self._bare_claims = not self._shield_claims and observer is NULL_OBSERVER
        self._methods = settings.methods
        self._max_key = settings.max_key_length
        self._max_request = settings.max_request_bytes
        self._max_response = settings.max_response_bytes
        self._filtered = self._include is not None or self._exclude is not None
        # optional tracing hooks (bastion.observe): absent, they cost nothing per request
        self._span_context = getattr(observer, "span_context", None)
        self._replayed_from = getattr(observer, "replayed_from", None)
        self._claimed = getattr(observer, "claimed", None)

    def covers(self, method: str, path: str, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """Whether this middleware decides a request itself: a keyed request (the key may
        still prove invalid) of its methods and paths, given normalised (`bastion._paths`).
        A rate limiter outside asks, for every request it limits, to leave the charge of
        these for the idempotency decision (`bastion.idempotency._quota`)."""
        if method not in self._methods or (self._filtered and not self._applies(path)):
            return False
        name = self._header
        for field, _ in headers:  # noqa: SIM110 - a loop: no generator per request
            if field == name:
                return True
        return False

    def _applies(self, path: str) -> bool:
        if self._include is not None and not self._include.match(path):
            return False
        return self._exclude is None or not self._exclude.match(path)

    async def _refuse(
        self,
        scope: Scope,
        send: Send,
        outcome: IdempotencyOutcome,
        status: int,
        slug: str,
        title: str,
        detail: str,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        """Answer a request the middleware will not run: reported, marked as bastion's own
        answer (for the metrics route label) and sent as problem+json."""
        if QUOTA_GATE_KEY in scope and not await settle(scope, fresh=False):
            return  # a replay tier outside refused it, and answered
        self.observer.idempotency(scope, outcome)
        scope[ANSWERED_SCOPE_KEY] = "idempotency"
        await send_problem(send, status, slug, title, detail, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method not in self._methods:
            method = normal_method(method)
            if method not in self._methods:
                await self.app(scope, receive, send)
                return
        path = normal_path(scope["path"])
        if self._filtered and not self._applies(path):
            await self.app(scope, receive, send)
            return
        try:
            raw_key = key_header(scope, self._header)
            key = None if raw_key is None else parse_key(raw_key, self._max_key)
        except InvalidKey as exc:
            await self._refuse(
                scope,
                send,
                "invalid_key",
                400,
                "idempotency-key-invalid",
                "Invalid Idempotency-Key",
                str(exc),
            )
            return
        if key is None:
            if self._require is not None and self._require.match(path):
                await self._refuse(
                    scope,
                    send,
                    "missing_key",
                    400,
                    "idempotency-key-missing",
                    "Idempotency-Key required",
                    f"This endpoint requires an {self.settings.header_name} header.",
                )
                return
            await self.app(scope, receive, send)
            return
        try:
            message = await receive()  # the usual body comes whole: no loop, no chunks
            if message["type"] == "http.request" and not message.get("more_body", False):
                body = message.get("body", b"")
                if len(body) > self._max_request:
                    raise BodyTooLarge
            else:
                body = await read_body(replay_message(message, receive), self._max_request)
        except ClientDisconnected:
            return
        except BodyTooLarge:
            await self._refuse(
                scope,
                send,
                "request_too_large",
                413,
                "request-too-large",
                "Request body too large",
                f"Idempotent requests are limited to {self.settings.max_request_bytes} bytes.",
            )
            return
        await KeyedRequest(self, scope, key, body, send, method, path).run(receive)
