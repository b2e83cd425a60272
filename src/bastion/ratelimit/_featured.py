"""The request path of tiers that use shadow mode, costs, overrides, count_when or concurrency.

`RateLimitMiddleware` sends a request here only when a tier that may apply to it uses one of
these, so a policy without them runs the short path it always ran. The rules:

- Shadow tiers are decided in the same store call as the others. Each bucket evolves as it
  would if its tier were enforced, and an enforced tier's bucket exactly as it would without
  any shadow tier: when only shadow tiers refuse, nothing was charged (the call is
  all-or-nothing), so the enforced tiers are decided again on their own, one more round trip
  that only such a request pays.
- A count_when tier sends its cost and then a cost of 0 for its bucket in that call: refused
  when the cost no longer fits, and charged nothing (`RateLimitStore.hit`). The charge is one
  more store call when the response starts with a matching status, made before the status
  is forwarded, so a client that waits for its answer is decided against a bucket holding it.
- Concurrency slots are taken first, in one more call, so a request refused for want of a
  slot spends no quota; one refused by a rate tier gives its slots back (one more call).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup

from bastion._asgi import ANSWERED_SCOPE_KEY, send_problem
from bastion._logging import ThrottledLogger
from bastion.idempotency._lease import LeaseRegistry, renew_every, run_keeping_lease
from bastion.observe import Observer
from bastion.ratelimit._answers import (
    all_allowed,
    send_denied,
    send_quota_exceeded,
    send_unavailable,
)
from bastion.ratelimit._headers import RETRY_AFTER, LimitItem, policy_item, rate_fields, seconds
from bastion.ratelimit._prepared import PreparedTier
from bastion.ratelimit._settings import RateLimitSettings
from bastion.ratelimit.costs import BodyNotMeasurable, InvalidCost
from bastion.ratelimit.keys import RequestView
from bastion.stores._protocols import (
    RateLimitDecision,
    RateLimitHit,
    SlotDecision,
    SlotRequest,
    TierValidatingStore,
)
from bastion.typing import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Admitted", "Featured"]

Admitted = tuple[Send, list[str], str]
"""An admitted request: its send, the concurrency slots it holds, and their token."""

logger = logging.getLogger("bastion.ratelimit")
failures = ThrottledLogger(logger)


class Limiter(Protocol):
    """What the featured path reads of its `RateLimitMiddleware`."""

    app: ASGIApp
    store: Any
    settings: RateLimitSettings
    observer: Observer
    _headers: bool
    _legacy: bool
    _observe: bool
    _unavailable_after: bytes


class _Entry:
    """One applicable rate tier of one request."""

    __slots__ = ("cost", "decision", "hit", "key", "limit", "policy", "shown", "tier")

    def __init__(self, tier: PreparedTier, key: str, limit: int, cost: int) -> None:
        self.tier = tier
        self.key = key
        self.limit = limit
        self.cost = cost
        self.hit = RateLimitHit(tier.prefix + key, tier.algorithm, limit, tier.window_ms, cost)
        self.policy = (
            tier.policy
            if limit == tier.limit
            else policy_item(tier.name, limit, tier.window, tier.unit)
        )
        self.decision: RateLimitDecision | None = None
        """The deciding answer: refused or not."""
        self.shown: RateLimitDecision | None = None
        """What the response's RateLimit field says (for count_when: the uncharged state)."""

    def hits(self) -> list[RateLimitHit]:
        if self.tier.count_when is None:
            return [self.hit]
        hit = self.hit
        return [hit, RateLimitHit(hit.key, hit.algorithm, hit.limit, hit.window_ms, 0)]

    def take(self, decisions: list[RateLimitDecision], at: int) -> int:
        self.decision = self.shown = decisions[at]
        if self.tier.count_when is None:
            return at + 1
        self.shown = decisions[at + 1]
        return at + 2

    @property
    def refused(self) -> bool:
        return self.decision is not None and not self.decision.allowed

    def item(self) -> LimitItem:
        shown = self.shown
        assert shown is not None
        return (shown.remaining, seconds(shown.reset_ms), self.tier.limit_prefix, self.limit)


class _Slot:
    """One applicable concurrency tier of one request."""

    __slots__ = ("decision", "key", "limit", "policy", "tier")

    def __init__(self, tier: PreparedTier, key: str, limit: int) -> None:
        self.tier = tier
        self.key = tier.prefix + key
        self.limit = limit
        self.policy = (
            tier.policy if limit == tier.limit else policy_item(tier.name, limit, None, tier.unit)
        )
        self.decision: SlotDecision | None = None

    @property
    def refused(self) -> bool:
        d = self.decision
        return d is not None and not d.acquired and d.in_flight >= d.limit

    def item(self) -> LimitItem:
        d = self.decision
        free = 0 if d is None else max(0, d.limit - d.in_flight)
        return (free, -1, self.tier.limit_prefix, self.limit)


class _Answered(Exception):
    """The request was answered (429, 503, 400, 413) before the app ran."""


class Featured:
    """The longer path, bound to one middleware (its store, settings and observer)."""

    def __init__(self, mw: Limiter) -> None:
        self.mw = mw
        self._lease_ms = mw.settings.concurrency_lease * 1000
        self._leases = LeaseRegistry(mw.settings.concurrency_lease / 3)
        self._busy_after = b"%d" % mw.settings.concurrency_retry_after

    # -- the request ------------------------------------------------------------------------

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        view: RequestView,
        tiers: list[PreparedTier],
    ) -> None:
        admitted = await self.admit(scope, send, view, tiers)
        if admitted is None:
            return
        wrapped, held, token = admitted
        if not held:
            await self.mw.app(scope, receive, wrapped)
            return
        await self._run_holding(scope, receive, wrapped, held, token)

    async def admit(
        self, scope: Scope, send: Send, view: RequestView, tiers: list[PreparedTier]
    ) -> Admitted | None:
        """Decide the request: None when it was answered (429, 503, 400, 413), else the send
        that adds its fields and counts its response, the concurrency slots it holds (to be
        released when it ends) and their token."""
        try:
            entries, slots = await self._collect(scope, send, view, tiers)
        except _Answered:
            return None
        if not entries and not slots:
            return send, [], ""
        token = os.urandom(12).hex()
        held: list[str] = []
        decided = True
        try:
            if slots:
                held = await self._acquire(scope, send, slots, token)
            if entries:
                decided = await self._decide(scope, send, entries)
        except _Answered:
            if held:
                await self._release(held, token)
            return None
        wrapped = (
            self._wrap(scope, send, [e for e in entries if not e.tier.shadow], entries, slots)
            if decided
            else send  # the store failed open: nothing is known, no fields are sent
        )
        return wrapped, held, token

    def keep_slots(
        self, held: list[str], token: str, renewals: TaskGroup | None
    ) -> Callable[[], Awaitable[None]]:
        """Renew ``held`` while a request admitted earlier runs; returns what releases them
        (`RateLimitMiddleware` outside an idempotency layer admits mid-request). Off asyncio
        the renewals run in ``renewals``, a task group around the rest of the request."""
        renew = self._renewer(held, token)
        holder = object()
        leases = self._leases.add(holder, renew)
        if leases is None and renewals is not None:
            renewals.start_soon(renew_every, self._lease_ms / 3000, renew)

        async def release() -> None:
            if leases is not None:
                leases.remove(holder)
            await self._release(held, token)

        return release

    def _renewer(self, held: list[str], token: str) -> Callable[[], Awaitable[bool]]:
        store: Any = self.mw.store
        lease_ms = self._lease_ms

        async def renew() -> bool:
            try:
                if await store.renew_slots(held, token, lease_ms=lease_ms):
                    return True
                logger.warning("a concurrency slot ran out while its request was running")
                return False
            except Exception as exc:
                failures.warning(f"rate-limit store failed to renew slots ({type(exc).__name__})")
                return True

        return renew

    def late_hits(self, view: RequestView, tiers: list[PreparedTier]) -> list[RateLimitHit]:
        """The static charge of the rate tiers (no slots, no computed costs, no overrides),
        for a request that was answered before anyone decided it."""
        return [
            RateLimitHit(t.prefix + key, t.algorithm, t.limit, t.window_ms, t.cost)
            for t in tiers
            if not t.concurrency and (key := t.key(view)) is not None
        ]

    async def _collect(
        self, scope: Scope, send: Send, view: RequestView, tiers: list[PreparedTier]
    ) -> tuple[list[_Entry], list[_Slot]]:
        entries: list[_Entry] = []
        slots: list[_Slot] = []
        for tier in tiers:
            key = tier.key(view)
            if key is None:
                continue
            limit = tier.limit
            if tier.overrides is not None:
                limit = await tier.overrides.limit(key, tier.limit)
                if limit != tier.limit and not self._valid_limit(tier, limit):
                    limit = tier.limit
            if tier.concurrency:
                slots.append(_Slot(tier, key, limit))
                continue
            cost = tier.cost
            if tier.cost_of is not None:
                try:
                    cost = min(tier.cost_of(view), limit + 1)  # more never fits either
                except InvalidCost as exc:
                    await self._bad_cost(scope, send, exc)
            entries.append(_Entry(tier, key, limit, cost))
        return entries, slots

    def _valid_limit(self, tier: PreparedTier, limit: int) -> bool:
        store = self.mw.store
        if tier.concurrency or not isinstance(store, TierValidatingStore):
            return True
        try:
            store.validate_hit(
                RateLimitHit(tier.name, tier.algorithm, limit, tier.window_ms, limit + 1)
            )
        except Exception:
            failures.warning(f"tier {tier.name}: override {limit} is beyond the store; ignored")
            return False
        return True

    # -- concurrency ------------------------------------------------------------------------

    async def _acquire(self, scope: Scope, send: Send, slots: list[_Slot], token: str) -> list[str]:
        store: Any = self.mw.store
        wanted = slots
        for _ in range(2):
            try:
                decisions = await store.acquire_slots(
                    [SlotRequest(s.key, s.limit) for s in wanted], token, lease_ms=self._lease_ms
                )
                if len(decisions) != len(wanted):
                    raise TypeError("the store answered the wrong number of slot decisions")
            except Exception as exc:
                failures.warning(f"rate-limit store failed to acquire slots ({type(exc).__name__})")
                await self._failed(scope, send, [s.tier for s in slots])
                return []
            for slot, decision in zip(wanted, decisions, strict=True):
                slot.decision = decision
            if all(d.acquired for d in decisions):
                self._report(scope, wanted, [])
                return [s.key for s in wanted]
            refused = [s for s in wanted if s.refused]
            if any(not s.tier.shadow for s in refused) or not refused:
                await self._deny_slots(scope, send, slots, refused)
            # only shadow tiers were full: take the enforced tiers' slots on their own
            self._report(scope, refused, refused)
            wanted = [s for s in slots if not s.tier.shadow]
            if not wanted:
                return []
        return []  # pragma: no cover - the loop returns or raises

    async def _deny_slots(
        self, scope: Scope, send: Send, slots: list[_Slot], refused: list[_Slot]
    ) -> None:
        real = [s for s in refused if not s.tier.shadow]
        self._report(scope, slots, refused)
        names = [s.tier.name for s in real] or [s.tier.name for s in slots]
        scope[ANSWERED_SCOPE_KEY] = "ratelimit"
        after = self.mw.settings.concurrency_retry_after
        fields = [(RETRY_AFTER, self._busy_after)]
        if self.mw._headers and real:
            policy = b", ".join([s.policy for s in real])
            fields += rate_fields(policy, [s.item() for s in real], legacy=self.mw._legacy)
        await send_quota_exceeded(send, names, after, fields)
        raise _Answered

    async def _run_holding(
        self, scope: Scope, receive: Receive, send: Send, held: list[str], token: str
    ) -> None:
        renew = self._renewer(held, token)
        holder = object()
        try:
            leases = self._leases.add(holder, renew)
            if leases is not None:
                try:
                    await self.mw.app(scope, receive, send)
                finally:
                    leases.remove(holder)
            else:
                error = await run_keeping_lease(
                    self._lease_ms / 3000, renew, lambda: self.mw.app(scope, receive, send)
                )
                if error is not None:
                    raise error
        finally:
            await self._release(held, token)

    async def _release(self, held: list[str], token: str) -> None:
        store: Any = self.mw.store
        with anyio.CancelScope(shield=True):
            try:
                await store.release_slots(held, token)
            except Exception as exc:
                # the slots free themselves when their lease runs out
                failures.warning(f"rate-limit store failed to release slots ({type(exc).__name__})")

    # -- rate tiers -------------------------------------------------------------------------

    async def _hit(self, entries: list[_Entry]) -> None:
        hits = [hit for entry in entries for hit in entry.hits()]
        decisions = await self.mw.store.hit(hits)
        all_allowed(decisions, len(hits))
        at = 0
        for entry in entries:
            at = entry.take(decisions, at)

    async def _decide(self, scope: Scope, send: Send, entries: list[_Entry]) -> bool:
        """Whether the store decided (False: it failed, and the request fails open)."""
        try:
            await self._hit(entries)
            shadow_refused = [e for e in entries if e.tier.shadow and e.refused]
            real = [e for e in entries if not e.tier.shadow]
            if shadow_refused and real and not any(e.refused for e in real):
                # nothing was charged: decide the enforced tiers again without the shadows
                await self._hit(real)
        except Exception as exc:
            failures.warning(f"rate-limit store failed ({type(exc).__name__})")
            await self._failed(scope, send, [e.tier for e in entries])
            return False
        refused = [e for e in entries if e.refused]
        self._report(scope, entries, refused)
        real_refused = [e for e in refused if not e.tier.shadow]
        if real_refused:
            await self._deny(scope, send, entries, real_refused)
        return True

    async def _deny(
        self, scope: Scope, send: Send, entries: list[_Entry], refused: list[_Entry]
    ) -> None:
        refusals = [
            (e.tier.name, e.tier.limit_prefix, e.limit, e.decision)
            for e in refused
            if e.decision is not None
        ]
        policy = (
            b", ".join([e.policy for e in entries if not e.tier.shadow])
            if self.mw._headers
            else None
        )
        await send_denied(scope, send, refusals, policy, legacy=self.mw._legacy)
        raise _Answered

    # -- the response -----------------------------------------------------------------------

    def _wrap(
        self,
        scope: Scope,
        send: Send,
        real: list[_Entry],
        entries: list[_Entry],
        slots: list[_Slot],
    ) -> Send:
        counted = [e for e in entries if e.tier.count_when is not None]
        shown_slots = [s for s in slots if not s.tier.shadow and s.decision is not None]
        headers = self.mw._headers and bool(real or shown_slots)
        if not counted and not headers:
            return send
        legacy = self.mw._legacy

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message.get("status", 200)
                for entry in counted:
                    when = entry.tier.count_when
                    if when is not None and when(status):  # type: ignore[operator]
                        await self._charge(scope, entry)
                if headers:
                    policy = b", ".join([e.policy for e in real] + [s.policy for s in shown_slots])
                    items = [e.item() for e in real] + [s.item() for s in shown_slots]
                    message["headers"] = [
                        *message.get("headers", ()),
                        *rate_fields(policy, items, legacy=legacy),
                    ]
            await send(message)

        return wrapped

    async def _charge(self, scope: Scope, entry: _Entry) -> None:
        """Spend the cost of a counted response; one that no longer fits is dropped, as the
        bucket is exhausted already."""
        try:
            decisions = await self.mw.store.hit([entry.hit])
            all_allowed(decisions, 1)
        except Exception as exc:
            failures.warning(f"rate-limit store failed to charge a response ({type(exc).__name__})")
            if self.mw._observe:
                self.mw.observer.rate_limit(scope, entry.tier.name, "store_error")
            return
        entry.shown = decisions[0]

    # -- shared -----------------------------------------------------------------------------

    def _report(self, scope: Scope, decided: list[Any], refused: list[Any]) -> None:
        mw = self.mw
        if not mw._observe and not any(r.tier.shadow for r in refused):
            return
        for one in decided:
            tier = one.tier
            if one not in refused:
                outcome = "allowed"
            elif tier.shadow:
                outcome = "would_limit"
                logger.info("shadow tier %s would limit key %s", tier.name, one.key)
            else:
                outcome = "limited"
            if mw._observe:
                mw.observer.rate_limit(scope, tier.name, outcome)  # type: ignore[arg-type]

    async def _failed(self, scope: Scope, send: Send, tiers: list[PreparedTier]) -> None:
        """Fail open unless an enforced tier says to fail closed (a shadow tier never does)."""
        closed = False
        for tier in tiers:
            self.mw.observer.rate_limit(scope, tier.name, "store_error")
            closed = closed or (not tier.fail_open and not tier.shadow)
        if not closed:
            return
        await send_unavailable(scope, send, self.mw._unavailable_after)
        raise _Answered

    async def _bad_cost(self, scope: Scope, send: Send, exc: InvalidCost) -> None:
        scope[ANSWERED_SCOPE_KEY] = "ratelimit"
        if isinstance(exc, BodyNotMeasurable):
            await send_problem(
                send, 413, "request-too-large", "Request too large to measure", str(exc)
            )
        else:
            await send_problem(send, 400, "invalid-cost", "Invalid request cost", str(exc))
        raise _Answered
