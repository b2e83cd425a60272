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
from typing import TYPE_CHECKING, Any

from bastion._asgi import ANSWERED_SCOPE_KEY, send_problem
from bastion._logging import ThrottledLogger
from bastion._paths import normal_method, normal_path
from bastion.idempotency._middleware import IdempotencyMiddleware
from bastion.idempotency._quota import QUOTA_GATE_KEY, QuotaGate
from bastion.observe import timed
from bastion.ratelimit._headers import RETRY_AFTER, LimitItem, rate_fields
from bastion.ratelimit.keys import RequestView
from bastion.stores._protocols import RateLimitDecision, RateLimitHit
from bastion.typing import Message, Receive, Scope, Send

if TYPE_CHECKING:
    from bastion.ratelimit._middleware import RateLimitMiddleware, _Group, _Tier

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


class Gate:
    """One keyed request's charge, settled by the idempotency layer inside (see the module)."""

    __slots__ = (
        "fields",
        "group",
        "held",
        "mw",
        "outer",
        "release",
        "scope",
        "send",
        "settled",
        "tiers",
        "view",
        "wrapped",
    )

    def __init__(
        self,
        mw: RateLimitMiddleware,
        scope: Scope,
        send: Send,
        view: RequestView,
        group: _Group,
        tiers: list[_Tier],
    ) -> None:
        self.mw = mw
        self.scope = scope
        self.send = send
        self.view = view
        self.group = group
        self.tiers = tiers
        self.settled = False
        self.fields: list[tuple[bytes, bytes]] = []
        self.wrapped: Send = send
        self.release: Any = None
        # another limiter outside this one left its gate: settle it first
        self.outer: QuotaGate | None = scope.get(QUOTA_GATE_KEY)

    async def run(self, receive: Receive) -> None:
        """Call the app with the gate in the scope; charge afterwards if nobody settled it."""
        self.scope[QUOTA_GATE_KEY] = self
        try:
            await self.mw.app(self.scope, receive, self._send)
        finally:
            if self.release is not None:
                await self.release()
        if not self.settled:
            self.scope.pop(QUOTA_GATE_KEY, None)
            await self._late_charge()

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
        if self.group.featured:
            admitted = await self.mw._featured.admit(self.scope, self.send, self.view, self.tiers)
            if admitted is None:
                return False
            self.wrapped, held, token = admitted
            if held:
                self.release = self.mw._featured.keep_slots(held, token)
            return True
        hits: list[RateLimitHit] = []
        tiers: list[_Tier] = []
        for tier in self.tiers:
            key = tier.key(self.view)
            if key is not None:
                hit = tier.hits.get(key)
                hits.append(tier.hit(key) if hit is None else hit)
                tiers.append(tier)
        return not hits or await self._decide(tiers, hits)

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
        return await self._decide([tier], [tier.hit(key) if hit is None else hit], tier.shadow)

    # -- deciding ------------------------------------------------------------------------------

    async def _decide(
        self, tiers: list[_Tier], hits: list[RateLimitHit], shadow: bool = False
    ) -> bool:
        """The short path's decision for ``hits``: True to go on (with the fields to send).
        ``shadow`` (the replay tier in global shadow mode): decided and counted, never sent."""
        mw, scope = self.mw, self.scope
        try:
            decisions: list[RateLimitDecision] = await timed(
                mw.observer, mw._backend, "hit", mw.store.hit(hits)
            )
            allowed = mw._check(decisions, len(hits))
        except Exception as exc:
            failures.warning(f"rate-limit store failed ({type(exc).__name__})")
            return await self._store_failed(tiers)
        if shadow:
            if not allowed:
                logger.info("shadow tier %s would limit key %s", tiers[0].name, hits[0].key)
            if mw._observe:
                mw.observer.rate_limit(
                    scope, tiers[0].name, "allowed" if allowed else "would_limit"
                )
            return True
        if mw._observe:
            for tier, decision in zip(tiers, decisions, strict=True):
                mw.observer.rate_limit(
                    scope, tier.name, "allowed" if decision.allowed else "limited"
                )
        if not allowed:
            await mw._deny(scope, self.send, tiers, decisions)
            return False
        if mw._headers:
            policy = b", ".join([tier.policy for tier in tiers])
            items: list[LimitItem] = [
                (d.remaining, -(-d.reset_ms // 1000), t.limit_prefix, t.limit)  # `seconds`
                for t, d in zip(tiers, decisions, strict=True)
            ]
            self.fields = rate_fields(policy, items, legacy=mw._legacy)
        return True

    async def _store_failed(self, tiers: list[_Tier]) -> bool:
        mw, scope = self.mw, self.scope
        closed = False
        for tier in tiers:
            mw.observer.rate_limit(scope, tier.name, "store_error")
            closed = closed or not tier.fail_open
        if not closed:
            return True
        scope[ANSWERED_SCOPE_KEY] = "ratelimit"
        await send_problem(
            self.send,
            503,
            "rate-limit-store-unavailable",
            "Rate limit store unavailable",
            "The request was not run because its rate limits could not be checked.",
            headers=[(RETRY_AFTER, mw._unavailable_after)],
        )
        return False

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


def _applies(tier: _Tier, scope: Scope) -> bool:
    if tier.methods and normal_method(scope["method"]) not in tier.methods:
        return False
    path = normal_path(scope["path"])
    return (
        tier.everything
        or path in tier.exact
        or (tier.pattern is not None and tier.pattern.fullmatch(path) is not None)
    )
