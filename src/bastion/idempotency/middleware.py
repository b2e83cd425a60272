"""`IdempotencyMiddleware`: a request carrying an ``Idempotency-Key`` runs at most once."""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
from collections.abc import Awaitable, Iterable
from fnmatch import translate

import anyio

from bastion._asgi import (
    ANSWERED_SCOPE_KEY,
    BodyTooLarge,
    ClientDisconnected,
    read_body,
    replay_receive,
    send_problem,
)
from bastion._logging import ThrottledLogger
from bastion.exceptions import ConfigurationError, StoreCapacityError, StoreError
from bastion.idempotency.capture import ResponseCapture
from bastion.idempotency.context import SCOPE_KEY, IdempotencyContext
from bastion.idempotency.fingerprint import fingerprint
from bastion.idempotency.keys import (
    InvalidKey,
    default_principal,
    key_header,
    parse_key,
    scoped_key,
)
from bastion.idempotency.lease import LeaseRegistry, run_keeping_lease
from bastion.idempotency.records import StoredResponse, encode_response
from bastion.observe import NULL_OBSERVER, IdempotencyOutcome, Observer, timed
from bastion.settings import IdempotencySettings
from bastion.stores.protocols import Claim, IdempotencyStore
from bastion.typing import ASGIApp, PrincipalExtractor, Receive, Scope, Send

__all__ = ["IdempotencyMiddleware"]

logger = logging.getLogger("bastion.idempotency")
store_failures = ThrottledLogger(logger)

REPLAYED_HEADER = (b"idempotent-replayed", b"true")
_PROCESS_NONCE = os.urandom(12).hex()
_SEQUENCE = itertools.count()
_WAIT_FIRST_POLL = 0.01
_WAIT_MAX_POLL = 0.25


def _token() -> str:
    """A fencing token unique to this claim: 96 random bits for the process, then a count.

    Tokens only have to differ between claims, never be secret; this is a third of the cost
    of fresh random bytes per request."""
    return f"{_PROCESS_NONCE}{next(_SEQUENCE):x}"


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
        self._include = None if settings.include == ("*",) else _compile(settings.include)
        self._exclude = _compile(settings.exclude)
        self._require = _compile(settings.require_key)
        self._lease_ms = int(settings.lease_seconds * 1000)
        self._ttl_ms = int(settings.ttl_seconds * 1000)
        # shared by the requests in flight, like a connection pool: one timer renews them all
        self._leases = LeaseRegistry(settings.lease_seconds / 3)
        self._backend = store.backend
        self._methods = settings.methods
        self._max_key = settings.max_key_length
        self._max_request = settings.max_request_bytes
        self._filtered = self._include is not None or self._exclude is not None

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
        self.observer.idempotency(scope, outcome)
        scope[ANSWERED_SCOPE_KEY] = "idempotency"
        await send_problem(send, status, slug, title, detail, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in self._methods
            or (self._filtered and not self._applies(scope["path"]))
        ):
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
            if self._require is not None and self._require.match(scope["path"]):
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
            body = await read_body(receive, self._max_request)
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
        await _Request(self, scope, key, body, send).run(replay_receive(body, receive))


class _Request(IdempotencyContext):
    """The life of one keyed request: claim, then replay, refuse, or run and store."""

    __slots__ = ("mw", "scope", "send")

    def __init__(
        self, mw: IdempotencyMiddleware, scope: Scope, key: str, body: bytes, send: Send
    ) -> None:
        # the request is its own handler context: one object per request, not two
        self.mw = mw
        self.scope = scope
        self.send = send
        self.key = scoped_key(mw.principal(scope) or "", key)
        self.fingerprint = fingerprint(
            scope["method"], scope["path"], scope.get("query_string", b""), body
        )
        self.token = _token()
        self.store = mw.store
        self.settings = mw.settings
        self.completed = False
        self.response = None

    def _claim(self) -> Awaitable[Claim]:
        mw = self.mw
        return timed(
            mw.observer,
            mw._backend,
            "claim",
            mw.store.claim(self.key, self.fingerprint, self.token, lease_ms=mw._lease_ms),
        )

    async def run(self, receive: Receive) -> None:
        mw, scope = self.mw, self.scope
        try:
            claim = await self._claim()
            if (
                mw.settings.wait
                and not claim.acquired
                and claim.response is None
                and claim.fingerprint == self.fingerprint
            ):
                claim = await self._wait(claim)
        except StoreCapacityError:
            # never run unprotected, even failing open: the store is full of running requests
            store_failures.warning("idempotency store is full of requests in flight")
            await mw._refuse(
                scope,
                self.send,
                "store_error",
                503,
                "idempotency-store-full",
                "Idempotency store full",
                "Too many requests with idempotency keys are in progress; retry shortly.",
                headers=[(b"retry-after", b"1")],
            )
            return
        except StoreError:
            store_failures.warning("idempotency store failed on claim")
            await self._unprotected(receive)
            return
        if claim.acquired:
            await self._execute(receive)
            return
        stored = None
        if claim.response is not None and claim.fingerprint == self.fingerprint:
            try:
                stored = StoredResponse.decode(claim.response)
            except ValueError:
                store_failures.warning("idempotency store returned an unreadable response")
                await self._unprotected(receive)
                return
        if claim.fingerprint != self.fingerprint:
            await mw._refuse(
                scope,
                self.send,
                "payload_mismatch",
                422,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                "This key was already used for a different request (method, path, query or body).",
            )
        elif stored is not None:
            mw.observer.idempotency(scope, "replayed")
            scope[ANSWERED_SCOPE_KEY] = "idempotency"
            await self._replay(stored)
        else:
            remaining = math.ceil(claim.lease_remaining_ms / 1000)
            retry_after = max(1, min(mw.settings.conflict_retry_after_seconds, remaining))
            await mw._refuse(
                scope,
                self.send,
                "conflict_in_flight",
                409,
                "idempotency-key-in-flight",
                "Request in progress",
                "A request with this key is still being processed; retry later.",
                headers=[(b"retry-after", str(retry_after).encode())],
            )

    async def _wait(self, claim: Claim) -> Claim:
        """Poll until the first request finishes, its lease ends, or the wait bound passes."""
        delay = _WAIT_FIRST_POLL
        with anyio.move_on_after(self.mw.settings.wait_timeout_seconds):
            while not claim.acquired and claim.response is None:
                await anyio.sleep(delay)
                delay = min(delay * 2, _WAIT_MAX_POLL)
                # a claim cut short by the timeout could hold the key with nobody running it
                with anyio.CancelScope(shield=True):
                    claim = await self._claim()
        return claim

    async def _unprotected(self, receive: Receive) -> None:
        """The store cannot guarantee this request: run it anyway (fail open) or answer 503."""
        mw, scope = self.mw, self.scope
        if mw.settings.fail_open:
            mw.observer.idempotency(scope, "store_error")
            await mw.app(scope, receive, self.send)
            return
        await mw._refuse(
            scope,
            self.send,
            "store_error",
            503,
            "store-unavailable",
            "Idempotency store unavailable",
            "The request was not run because its idempotency could not be guaranteed.",
            headers=[(b"retry-after", b"1")],
        )

    async def _replay(self, response: StoredResponse) -> None:
        await self.send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [*response.headers, REPLAYED_HEADER],
            }
        )
        await self.send({"type": "http.response.body", "body": response.body, "more_body": False})

    async def _execute(self, receive: Receive) -> None:
        mw = self.mw
        capture = ResponseCapture(self.send, mw.settings.max_response_bytes)
        self.scope[SCOPE_KEY] = self
        error: Exception | None = None
        try:
            leases = mw._leases.add(self, self._renew_lease)
            if leases is not None:
                try:
                    await mw.app(self.scope, receive, capture)
                except Exception as exc:
                    error = exc
                finally:
                    leases.remove(self)
            else:
                error = await run_keeping_lease(
                    mw._lease_ms / 3000,
                    self._renew_lease,
                    lambda: mw.app(self.scope, receive, capture),
                )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._finish(capture)
            raise
        if error is not None:
            # a response already sent in full (the app raised afterwards, in a background
            # task) is kept: the handler ran, and a retry must not run it again
            with anyio.CancelScope(shield=True):
                await self._finish(capture)
            raise error
        await self._finish(capture)

    async def _renew_lease(self) -> bool:
        """Renew once; False once there is nothing left to hold."""
        mw = self.mw
        if self.completed:
            return False  # stored in the handler's own transaction
        try:
            held = await timed(
                mw.observer,
                mw._backend,
                "renew",
                mw.store.renew(self.key, self.token, lease_ms=mw._lease_ms),
            )
        except StoreError:
            store_failures.warning("idempotency store failed to renew a lease")
            return True
        if not held and not self.completed:
            mw.observer.idempotency(self.scope, "lease_lost")
        return held

    def _storable(self, capture: ResponseCapture | None) -> bool:
        if capture is None or not capture.complete or capture.overflow:
            return False
        return self.mw.settings.keeps(capture.status)

    def _check_sent(self, stored: bytes | None, capture: ResponseCapture | None) -> None:
        """Warn when the handler stored one response in its transaction and sent another:
        retries would replay the stored one. Something between this middleware and the
        handler changed it (compression, added headers) or the handler did after storing."""
        if stored is None or capture is None or not capture.complete or capture.overflow:
            return
        if encode_response(capture.status, capture.headers, capture.body) != stored:
            logger.warning(
                "the response sent for an idempotent request differs from the one stored in "
                "its transaction; retries will replay the stored one (put middleware that "
                "rewrites responses outside IdempotencyMiddleware, and do not change a "
                "response after completing it)"
            )

    async def _finish(self, capture: ResponseCapture | None) -> None:
        """Store the captured response, or release the key so a retry runs again."""
        mw, scope = self.mw, self.scope
        if self.completed:
            self._check_sent(self.response, capture)
            mw.observer.idempotency(scope, "stored")
            return
        try:
            if capture is not None and self._storable(capture):
                data = encode_response(capture.status, capture.headers, capture.body)
                stored = await timed(
                    mw.observer,
                    mw._backend,
                    "complete",
                    mw.store.complete(self.key, self.token, data, ttl_ms=mw._ttl_ms),
                )
                mw.observer.idempotency(scope, "stored" if stored else "lease_lost")
            else:
                await timed(
                    mw.observer,
                    mw._backend,
                    "release",
                    mw.store.release(self.key, self.token),
                )
                mw.observer.idempotency(scope, "released")
        except StoreError:
            store_failures.warning("idempotency store failed to finish a request")
            mw.observer.idempotency(scope, "store_error")
