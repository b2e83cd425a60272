"""Rate limits outside an idempotency layer: keyed requests are charged once their kind is known.

`RateLimitMiddleware` finds an `IdempotencyMiddleware` inside it when it is built (through the
``app`` attributes of the middleware between them). For each request that middleware will
decide (a keyed request of its methods and paths), the limiter decides nothing up front: it
leaves a `Gate` in the scope (the `bastion.idempotency._quota` protocol) and the idempotency
layer settles it after its claim:

- a fresh request (the claim was taken, or the idempotency store failed open) is charged to
  the normal tiers before its handler runs, all or nothing, exactly as the limiter would have
  charged it; when they refuse, the limiter sends its 429 and the idempotency layer releases
  the key, so a retry after ``Retry-After`` runs the request;
- a request the idempotency layer answers itself (a replay, an in-flight 409, a 422, a bad key)
  costs the normal tiers nothing; ``RateLimitSettings.replay_tier`` charges such answers to a
  generous tier of their own.

A request that something between the two middleware answered (so the gate was never settled)
is charged afterwards, as it would have been before, so the tiers still count it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup

from bastion._logging import ThrottledLogger
from bastion._paths import normal_method, normal_path
from bastion.idempotency._lease import LeaseRegistry
from bastion.idempotency._middleware import IdempotencyMiddleware
from bastion.idempotency._quota import QUOTA_GATE_KEY, QuotaGate
from bastion.observe import Observer, timed
from bastion.ratelimit._featured import Featured
from bastion.ratelimit._prepared import PreparedTier, TierGroup
from bastion.ratelimit.keys import RequestView
from bastion.stores._protocols import RateLimitHit
from bastion.typing import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Gate", "idempotency_inside"]

_MAX_DEPTH = 64

logger = logging.getLogger("bastion.ratelimit")
failures = ThrottledLogger(logger)


def idempotency_inside(app: Any) -> IdempotencyMiddleware | None:
    """The idempotency middleware ``app`` leads to through ``app`` attributes (every
    Starlette-style middleware keeps its inner app there), or None."""
    for _ in range(_MAX_DEPTH):
        if isinstance(app, IdempotencyMiddleware):
            return app
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


Fields = Sequence[tuple[bytes, bytes]]
"""Header fields a limiter adds to a response."""


class Limiter(Protocol):
    """What a gate reads of its `RateLimitMiddleware`."""

    app: ASGIApp
    store: Any
    observer: Observer
    _backend: str
    _featured: Featured
    _joint: bool
    _replay: PreparedTier | None

    def _hits(
        self, view: RequestView, tiers: list[PreparedTier]
    ) -> tuple[list[RateLimitHit], list[PreparedTier]]: ...

    async def _decide(
        self,
        scope: Scope,
        send: Send,
        tiers: list[PreparedTier],
        hits: list[RateLimitHit],
        group: TierGroup | None = None,
        *,
        shadow: bool = False,
        charged: object = ...,
    ) -> Fields | None: ...


class Gate:
    """One keyed request's charge, settled by the idempotency layer inside (see the module)."""

    __slots__ = (
        "fields",
        "group",
        "held",
        "joint",
        "mw",
        "outer",
        "release",
        "renewals",
        "scope",
        "send",
        "settled",
        "tiers",
        "view",
        "wrapped",
    )

    def __init__(
        self,
        mw: Limiter,
        scope: Scope,
        send: Send,
        view: RequestView,
        group: TierGroup,
        tiers: list[PreparedTier],
    ) -> None:
        self.mw = mw
        self.scope = scope
        self.send = send
        self.view = view
        self.group = group
        self.tiers = tiers
        self.settled = False
        self.fields: Fields = ()
        self.wrapped: Send = send
        self.release: Any = None
        self.renewals: TaskGroup | None = None
        self.joint: tuple[list[RateLimitHit], list[PreparedTier]] | None = None
        # another limiter outside this one left its gate: settle it first
        self.outer: QuotaGate | None = scope.get(QUOTA_GATE_KEY)

    async def run(self, receive: Receive) -> None:
        """Call the app with the gate in the scope; charge afterwards if nobody settled it."""
        self.scope[QUOTA_GATE_KEY] = self
        try:
            if self.group.featured and not LeaseRegistry.available():
                await self._run_renewing(receive)
            else:
                await self.mw.app(self.scope, receive, self._send)
        finally:
            if self.release is not None:
                await self.release()
        if not self.settled:
            self.scope.pop(QUOTA_GATE_KEY, None)
            await self._late_charge()

    async def _run_renewing(self, receive: Receive) -> None:
        """The app inside a task group where concurrency slots taken mid-request are renewed
        (off asyncio, where the middleware's shared lease timer does not run)."""
        error: Exception | None = None
        async with anyio.create_task_group() as tg:
            self.renewals = tg
            try:
                await self.mw.app(self.scope, receive, self._send)
            except Exception as exc:
                error = exc  # raised below, not wrapped in the task group's exception group
            finally:
                tg.cancel_scope.cancel()
        if error is not None:
            raise error

    async def _send(self, message: Message) -> None:
        if self.fields and message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *self.fields]
        await self.wrapped(message)

    # -- the protocol --------------------------------------------------------------------------

    async def fresh(self) -> bool:
        self.settled = True
        if self.outer is not None and not await self.outer.fresh():
            return False
        if not self.tiers:
            return True
        mw = self.mw
        if self.group.featured:
            admitted = await mw._featured.admit(self.scope, self.send, self.view, self.tiers)
            if admitted is None:
                return False
            self.wrapped, held, token = admitted
            if held:
                self.release = mw._featured.keep_slots(held, token, self.renewals)
            return True
        hits, tiers = mw._hits(self.view, self.tiers)
        if not hits:
            return True
        return self._going_on(await mw._decide(self.scope, self.send, tiers, hits, self.group))

    def joint_hits(self) -> list[RateLimitHit] | None:
        if self.outer is not None or not self.mw._joint or self.group.featured or not self.tiers:
            return None
        hits, tiers = self.mw._hits(self.view, self.tiers)
        if not hits:
            return None
        self.joint = hits, tiers
        return hits

    async def charged(self, decisions: object) -> bool:
        self.settled = True
        assert self.joint is not None
        hits, tiers = self.joint
        return self._going_on(
            await self.mw._decide(self.scope, self.send, tiers, hits, self.group, charged=decisions)
        )

    async def answered(self) -> bool:
        self.settled = True
        if self.outer is not None and not await self.outer.answered():
            return False
        tier = self.mw._replay
        if tier is None or not _applies(tier, self.scope):
            return True
        key = tier.key(self.view)
        if key is None:
            return True
        hit = tier.hits.get(key)
        hits = [tier.hit(key) if hit is None else hit]
        return self._going_on(
            await self.mw._decide(self.scope, self.send, [tier], hits, shadow=tier.shadow)
        )

    def _going_on(self, fields: Fields | None) -> bool:
        """What a settlement answers for a charge `_decide` made: True to go on, with its
        ``fields`` for the response; False when the limiter has answered (429 or 503)."""
        if fields is None:
            return False
        self.fields = fields
        return True

    # -- deciding ------------------------------------------------------------------------------

    async def _late_charge(self) -> None:
        """Something between the limiter and the idempotency layer answered the request: it
        is charged now, as it was before it could be deferred, and cannot be refused."""
        hits = self.mw._featured.late_hits(self.view, self.tiers)
        if not hits:
            return
        try:
            await timed(self.mw.observer, self.mw._backend, "hit", self.mw.store.hit(hits))
        except Exception as exc:
            failures.warning(f"rate-limit store failed ({type(exc).__name__})")


def _applies(tier: PreparedTier, scope: Scope) -> bool:
    if tier.methods and normal_method(scope["method"]) not in tier.methods:
        return False
    path = normal_path(scope["path"])
    return (
        tier.everything
        or path in tier.exact
        or (tier.pattern is not None and tier.pattern.fullmatch(path) is not None)
    )
