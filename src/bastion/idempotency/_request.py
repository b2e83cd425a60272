"""The life of one keyed request: claim, then replay, refuse, or run and store."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Any, Protocol, TypeVar, cast

import anyio
from anyio.lowlevel import checkpoint_if_cancelled

from bastion._asgi import ANSWERED_SCOPE_KEY, replay_receive
from bastion._core.records import StoredResponse, encode_response
from bastion._logging import ThrottledLogger
from bastion.exceptions import StoreCapacityError, StoreError
from bastion.idempotency._capture import ResponseCapture
from bastion.idempotency._context import SCOPE_KEY, IdempotencyContext
from bastion.idempotency._decision import (
    COMPLETED,
    MISMATCH,
    RUN,
    RUN_UNPROTECTED,
    STORE,
    Conflict,
    decide,
    ending,
    pending,
    store_failed,
    waits,
)
from bastion.idempotency._fingerprint import normal_fingerprint
from bastion.idempotency._keys import scoped_key
from bastion.idempotency._lease import LeaseRegistry, run_keeping_lease
from bastion.idempotency._quota import QUOTA_GATE_KEY, QuotaGate, settle
from bastion.idempotency._settings import IdempotencySettings
from bastion.idempotency._tokens import new_token
from bastion.observe import IdempotencyOutcome, Observer, timed
from bastion.stores._protocols import Claim, ClaimHitStore, IdempotencyStore, RateLimitHit
from bastion.typing import ASGIApp, PrincipalExtractor, Receive, Scope, Send

__all__ = ["KeyedRequest"]

logger = logging.getLogger("bastion.idempotency")
store_failures = ThrottledLogger(logger)
unreadable_records = ThrottledLogger(logger)

REPLAYED_HEADER = (b"idempotent-replayed", b"true")
_WAIT_FIRST_POLL = 0.01
_WAIT_MAX_POLL = 0.25
_T = TypeVar("_T")


class Idempotent(Protocol):
    """What a keyed request reads of its `IdempotencyMiddleware`: its configuration, computed
    once, and its answer for a request it will not run."""

    app: ASGIApp
    store: IdempotencyStore
    settings: IdempotencySettings
    principal: PrincipalExtractor
    observer: Observer
    _backend: str
    _lease_ms: int
    _ttl_ms: int
    _leases: LeaseRegistry
    _shield_claims: bool
    _bare_claims: bool
    _max_response: int
    _claimed: Any
    _span_context: Any
    _replayed_from: Any

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
    ) -> None: ...


def _checked(claim: object) -> Claim:
    """``claim`` if it is the `Claim` the protocol promises, else `StoreError`.

    A store that answers with anything else (a custom store's bug, a client library's
    surprise) is a failing store: the request gets the store-failure policy, never a 500 or
    a decision made on a wrong field. The common answers pass on the first line."""
    if type(claim) is Claim:
        acquired, fingerprint_, response, remaining = claim
        if acquired is True or (
            acquired is False
            and type(fingerprint_) is str
            and (response is None or type(response) is bytes)
            and type(remaining) is int
        ):
            return claim
    if isinstance(claim, Claim) and type(claim.acquired) is bool:
        acquired, fingerprint_, response, remaining = claim
        if acquired:
            return claim
        if (
            isinstance(fingerprint_, str)
            and isinstance(remaining, int | float)
            and not isinstance(remaining, bool)
        ):
            if response is None:
                return claim
            if isinstance(response, bytes | bytearray | memoryview):
                return claim._replace(response=bytes(response))
    raise StoreError(f"the store answered a claim with a malformed {type(claim).__name__}")


def _joint(answer: object) -> tuple[Claim, object]:
    """The claim of a `ClaimHitStore.claim_and_hit` answer, checked as `_checked` does, and
    its decisions, for the limiter to check."""
    if type(answer) is not tuple or len(answer) != 2:
        raise StoreError(f"the store answered a claim and hits with a {type(answer).__name__}")
    claim, decisions = answer
    return _checked(claim), decisions


def _failure(action: str, exc: BaseException) -> str:
    return f"idempotency store failed {action} ({type(exc).__name__})"


class KeyedRequest(IdempotencyContext):
    """The life of one keyed request: claim, then replay, refuse, or run and store."""

    __slots__ = ("body", "mw", "scope", "send")

    def __init__(
        self,
        mw: Idempotent,
        scope: Scope,
        key: str,
        body: bytes,
        send: Send,
        method: str,
        path: str,
    ) -> None:
        # the request is its own handler context: one object per request, not two
        self.mw = mw
        self.scope = scope
        self.send = send
        self.body = body
        self.key = scoped_key(mw.principal(scope) or "", key)
        self.fingerprint = normal_fingerprint(method, path, scope.get("query_string", b""), body)
        self.token = new_token()
        self.store = mw.store
        self.settings = mw.settings
        self.completed = False
        self.response = None
        self.trace = None

    def _claim(self) -> Awaitable[Claim]:
        mw = self.mw
        return timed(
            mw.observer,
            mw._backend,
            "claim",
            mw.store.claim(self.key, self.fingerprint, self.token, lease_ms=mw._lease_ms),
        )

    def _claim_and_hit(self, hits: Sequence[RateLimitHit]) -> Awaitable[object]:
        mw = self.mw
        store = cast(ClaimHitStore, mw.store)
        return timed(
            mw.observer,
            mw._backend,
            "claim_and_hit",
            store.claim_and_hit(
                self.key, self.fingerprint, self.token, hits, lease_ms=mw._lease_ms
            ),
        )

    async def _shielded(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """A claim, shielded: a request cancelled while the store answers must not leave a
        lease behind that nobody holds. A store whose primitives never suspend cannot be
        interrupted, so it is spared the shield's cost."""
        if not self.mw._shield_claims:
            return await call()
        try:
            with anyio.CancelScope(shield=True):
                answer = await call()
            await checkpoint_if_cancelled()
            return answer
        except anyio.get_cancelled_exc_class():
            await self._release("a cancelled claim")
            raise

    async def run(self, receive: Receive) -> None:
        """Claim the key, then run, replay or refuse; ``receive`` is the server's, the body
        already read from it is handed to the app first."""
        mw, scope = self.mw, self.scope
        # a limiter outside sharing the store: its hits go with the claim, in one call
        gate: QuotaGate | None = scope.get(QUOTA_GATE_KEY)
        hits = None if gate is None else gate.joint_hits()
        decisions: object = None
        try:
            if hits:
                claim, decisions = _joint(await self._shielded(partial(self._claim_and_hit, hits)))
            elif mw._bare_claims:
                claim = await mw.store.claim(
                    self.key, self.fingerprint, self.token, lease_ms=mw._lease_ms
                )
                if type(claim) is not Claim or claim[0] is not True:  # the common answer
                    claim = _checked(claim)
            else:
                claim = _checked(await self._shielded(self._claim))
            if not claim[0] and waits(claim, self.fingerprint, mw.settings):
                claim = await self._wait(claim)
                decisions = None  # a claim taken after waiting charged nothing
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
        except Exception as exc:
            # whatever a store raises or answers is its failure, for the policy to answer
            store_failures.warning(_failure("on claim", exc))
            await self._unprotected(receive)
            return
        # decided outside the store's failure policy: a record that cannot be read ran already
        decision = RUN if claim[0] is True else decide(claim, self.fingerprint, mw.settings)
        if decision is RUN:
            if decisions is not None:
                del scope[QUOTA_GATE_KEY]
                assert gate is not None
                if not await gate.charged(decisions):
                    await self._give_back()
                    return
            elif QUOTA_GATE_KEY in scope and not await settle(scope, fresh=True):
                await self._give_back()
                return
            await self._execute(receive)
        elif type(decision) is StoredResponse:
            if QUOTA_GATE_KEY in scope and not await settle(scope, fresh=False):
                return
            if decision.trace is not None and mw._replayed_from is not None:
                mw._replayed_from(scope, decision.trace)
            mw.observer.idempotency(scope, "replayed")
            scope[ANSWERED_SCOPE_KEY] = "idempotency"
            await self._replay(decision)
        elif type(decision) is Conflict:
            await mw._refuse(
                scope,
                self.send,
                "conflict_in_flight",
                409,
                "idempotency-key-in-flight",
                "Request in progress",
                "A request with this key is still being processed; retry later.",
                headers=[(b"retry-after", str(decision.retry_after).encode())],
            )
        elif decision is MISMATCH:
            await mw._refuse(
                scope,
                self.send,
                "payload_mismatch",
                422,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                "This key was already used for a different request (method, path, query or body).",
            )
        else:
            await self._unreadable()

    async def _give_back(self) -> None:
        """Release the key this request claimed but will not run (a rate limit outside refused
        it once its claim showed it fresh), so that a retry runs it."""
        await self._release("a rate-limited claim")

    async def _release(self, what: str) -> None:
        """Release this request's claim, shielded from cancellation; a store failure is only
        logged. The token fences it: it frees this request's lease and nothing else."""
        mw = self.mw
        with anyio.CancelScope(shield=True):
            try:
                await timed(
                    mw.observer, mw._backend, "release", mw.store.release(self.key, self.token)
                )
            except Exception as exc:
                store_failures.warning(_failure(f"to release {what}", exc))

    async def _wait(self, claim: Claim) -> Claim:
        """Poll until the first request finishes, its lease ends, or the wait bound passes."""
        delay = _WAIT_FIRST_POLL
        with anyio.move_on_after(self.mw.settings.wait_timeout_seconds):
            while pending(claim):
                await anyio.sleep(delay)
                delay = min(delay * 2, _WAIT_MAX_POLL)
                # a claim cut short by the timeout could hold the key with nobody running it
                with anyio.CancelScope(shield=True):
                    claim = _checked(await self._claim())
        return claim

    async def _unprotected(self, receive: Receive) -> None:
        """The store cannot guarantee this request: run it anyway (fail open) or answer 503."""
        mw, scope = self.mw, self.scope
        if store_failed(mw.settings) is RUN_UNPROTECTED:
            if QUOTA_GATE_KEY in scope and not await settle(scope, fresh=True):
                return
            mw.observer.idempotency(scope, "store_error")
            await mw.app(scope, replay_receive(self.body, receive), self.send)
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

    async def _unreadable(self) -> None:
        """A completed record this instance cannot read: the handler ran (its response was
        stored), so it must not run again whatever ``fail_open`` says. 503, not 409: the fault
        is the server's, and during a rolling deploy a retry that reaches an instance knowing
        the record's newer format gets the replay."""
        unreadable_records.warning(
            "an idempotency record holds a stored response this version cannot read "
            "(a newer format during a rolling deploy, or corruption); answering 503"
        )
        await self.mw._refuse(
            self.scope,
            self.send,
            "record_unreadable",
            503,
            "idempotency-record-unreadable",
            "Stored response unreadable",
            "This request already ran, but its stored response cannot be read here; "
            "retry later to get it.",
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
        # the body is read: from here the handler runs to completion whatever the client
        # does, so the capture hides its departure while the response can still be stored
        capture = ResponseCapture(self.send, receive, mw._max_response, self.body)
        hidden = capture.receive
        self.scope[SCOPE_KEY] = self
        if mw._claimed is not None:
            mw._claimed(self.scope)
        if mw._span_context is not None:
            self.trace = mw._span_context(self.scope)
        error: Exception | None = None
        try:
            leases = mw._leases.add(self, self._renew_lease)
            if leases is not None:
                try:
                    await mw.app(self.scope, hidden, capture)
                except Exception as exc:
                    error = exc
                finally:
                    leases.remove(self)
                    capture.end()
            else:
                try:
                    error = await run_keeping_lease(
                        mw._lease_ms / 3000,
                        self._renew_lease,
                        lambda: mw.app(self.scope, hidden, capture),
                    )
                finally:
                    capture.end()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._finish(capture)
            raise
        finally:
            # the scope and this request refer to each other: a cycle only the collector would
            # free, so every request would leave garbage behind (long pauses under load)
            if self.scope.get(SCOPE_KEY) is self:
                del self.scope[SCOPE_KEY]
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
        except Exception as exc:
            # the response is under way: keep trying at the next interval
            store_failures.warning(_failure("to renew a lease", exc))
            mw.observer.idempotency(self.scope, "store_error")
            return True
        if not held and not self.completed:
            mw.observer.idempotency(self.scope, "lease_lost")
        return held

    def _check_sent(self, stored: bytes | None, capture: ResponseCapture | None) -> None:
        """Warn when the handler stored one response in its transaction and sent another:
        retries would replay the stored one. Something between this middleware and the
        handler changed it (compression, added headers) or the handler did after storing."""
        if stored is None or capture is None or not capture.complete or capture.overflow:
            return
        sent = encode_response(capture.status, capture.headers, capture.body, trace=self.trace)
        if sent != stored and (
            self.trace is None
            or encode_response(capture.status, capture.headers, capture.body) != stored
        ):
            logger.warning(
                "the response sent for an idempotent request differs from the one stored in "
                "its transaction; retries will replay the stored one (put middleware that "
                "rewrites responses outside IdempotencyMiddleware, and do not change a "
                "response after completing it)"
            )

    async def _finish(self, capture: ResponseCapture) -> None:
        """Store the captured response, or release the key so a retry runs again."""
        mw, scope = self.mw, self.scope
        end = ending(
            self.completed, capture.status, capture.complete, capture.overflow, mw.settings
        )
        if end is COMPLETED:
            self._check_sent(self.response, capture)
            mw.observer.idempotency(scope, "stored")
            return
        try:
            if end is STORE:
                data = encode_response(
                    capture.status, capture.headers, capture.body, trace=self.trace
                )
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
        except Exception as exc:
            store_failures.warning(_failure("to finish a request", exc))
            mw.observer.idempotency(scope, "store_error")
