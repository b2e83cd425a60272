"""`RateLimitMiddleware`: tiered limits decided in one store call per request."""

from __future__ import annotations

import logging
from typing import cast

from bastion._asgi import ClientDisconnected, header, replay_receive
from bastion._logging import ThrottledLogger
from bastion._paths import normal_method, normal_path
from bastion.exceptions import ConfigurationError
from bastion.observe import NULL_OBSERVER, Observer, timed
from bastion.ratelimit._answers import QUOTA_EXCEEDED, all_allowed, send_denied, send_unavailable
from bastion.ratelimit._featured import Featured
from bastion.ratelimit._gate import Fields, Gate, idempotency_inside
from bastion.ratelimit._headers import (
    LimitItem,
    rate_fields,
)
from bastion.ratelimit._prepared import PreparedTier, TierGroup
from bastion.ratelimit._proxies import AddressResolver
from bastion.ratelimit._settings import RateLimitSettings
from bastion.ratelimit.keys import RequestView
from bastion.stores._protocols import (
    ClaimHitStore,
    ConcurrencyStore,
    RateLimitDecision,
    RateLimitHit,
    RateLimitStore,
    TierValidatingStore,
)
from bastion.typing import ASGIApp, Message, Receive, Scope, Send

__all__ = ["QUOTA_EXCEEDED", "RateLimitMiddleware"]

logger = logging.getLogger("bastion.ratelimit")
store_failures = ThrottledLogger(logger)

NO_FIELDS: Fields = ()
_UNDECIDED = object()


class RateLimitMiddleware:
    """Limits requests by the tiers of ``settings``, all decided in one atomic store call.

    A request passes only if every applicable tier allows it; a denied one is charged to no
    tier and gets 429 with ``Retry-After`` and a problem+json body naming the tiers that denied
    it. Responses carry the IETF ``RateLimit-Policy`` and ``RateLimit`` fields. When the store
    fails, each tier's ``fail_open`` decides: let the request through (the default) or 503.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: RateLimitStore,
        settings: RateLimitSettings,
        observer: Observer = NULL_OBSERVER,
    ) -> None:
        if not isinstance(store, RateLimitStore):
            raise ConfigurationError(
                f"{type(store).__name__} does not implement the rate-limit store protocol"
            )
        if not isinstance(settings, RateLimitSettings):
            raise ConfigurationError("settings must be a RateLimitSettings")
        if not settings.tiers:
            raise ConfigurationError("RateLimitSettings.tiers is empty: nothing would be limited")
        if isinstance(store, TierValidatingStore):
            # a tier this backend cannot decide would otherwise fail on every request it
            # matches, quietly turned into the fail-open or fail-closed answer (a computed
            # cost is capped at limit + 1, which never fits)
            for tier in settings.tiers:
                if not tier.concurrency:
                    cost = tier.cost if isinstance(tier.cost, int) else tier.limit + 1
                    store.validate_hit(
                        RateLimitHit(tier.name, tier.algorithm, tier.limit, tier.window_ms, cost)
                    )
        if any(tier.concurrency for tier in settings.tiers) and not isinstance(
            store, ConcurrencyStore
        ):
            raise ConfigurationError(
                f"{type(store).__name__} does not implement the concurrency store protocol, "
                "which concurrency tiers need"
            )
        self.app = app
        self.store = store
        self.settings = settings
        self.observer = observer
        self._observe = observer is not NULL_OBSERVER
        self._backend = store.backend
        self._headers = settings.headers
        self._legacy = settings.legacy_headers
        self._max_body = settings.max_body_bytes
        self._unavailable_after = b"%d" % settings.store_error_retry_after
        self._resolver = AddressResolver(
            settings.trusted_proxies,
            proxy_header=settings.proxy_header,
            ipv6_prefix_length=settings.ipv6_prefix_length,
        )
        tiers = [PreparedTier(tier, settings.fail_open, settings.shadow) for tier in settings.tiers]
        self._featured = Featured(self)
        # keyed requests an idempotency layer inside decides are charged once it has decided
        self._idempotency = idempotency = idempotency_inside(app)
        # sharing a store that can, the two claim and charge a fresh request in one call
        self._joint = (
            idempotency is not None
            and isinstance(store, ClaimHitStore)
            and store.claims_with_hits
            and idempotency.store is store
        )
        replay = settings.replay_tier
        self._replay = (
            None if replay is None else PreparedTier(replay, settings.fail_open, settings.shadow)
        )
        # tiers by method, so a request only looks at the tiers that can apply to it
        pairs = list(zip(tiers, settings.tiers, strict=True))
        methods = {method for tier in settings.tiers for method in tier.methods}
        self._any_method = TierGroup(tuple(t for t, s in pairs if not s.methods))
        self._by_method = {
            method: TierGroup(tuple(t for t, s in pairs if not s.methods or method in s.methods))
            for method in methods
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = normal_path(scope["path"])
        method = normal_method(scope["method"])
        group = self._by_method.get(method, self._any_method)
        applicable: list[PreparedTier] = []
        needs_body = False
        for tier in group.tiers:
            if (
                tier.everything
                or path in tier.exact
                or (tier.pattern is not None and tier.pattern.fullmatch(path) is not None)
            ):
                applicable.append(tier)
                needs_body = needs_body or tier.needs_body
        if not applicable and self._replay is None:
            await self.app(scope, receive, send)
            return
        body = None
        if needs_body:
            try:
                body, receive = await _buffer(scope, receive, self._max_body)
            except ClientDisconnected:
                return
        view = RequestView(scope, self._resolver, body)
        idempotency = self._idempotency
        if idempotency is not None and idempotency.covers(method, path, scope["headers"]):
            await Gate(self, scope, send, view, group, applicable).run(receive)
            return
        if not applicable:  # only the replay tier might have applied
            await self.app(scope, receive, send)
            return
        if group.featured:
            await self._featured(scope, receive, send, view, applicable)
            return
        hits, tiers = self._hits(view, applicable)
        if not hits:
            await self.app(scope, receive, send)
            return
        fields = await self._decide(scope, send, tiers, hits, group)
        if fields is None:
            return
        if not fields:
            await self.app(scope, receive, send)
            return

        async def send_with_fields(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *fields]
            await send(message)

        await self.app(scope, receive, send_with_fields)

    def _hits(
        self, view: RequestView, tiers: list[PreparedTier]
    ) -> tuple[list[RateLimitHit], list[PreparedTier]]:
        """The hit of each tier that finds a key for the request, and those tiers."""
        hits: list[RateLimitHit] = []
        keyed: list[PreparedTier] = []
        for tier in tiers:
            key = tier.key(view)
            if key is not None:
                hit = tier.hits.get(key)
                hits.append(tier.hit(key) if hit is None else hit)
                keyed.append(tier)
        return hits, keyed

    async def _decide(
        self,
        scope: Scope,
        send: Send,
        tiers: list[PreparedTier],
        hits: list[RateLimitHit],
        group: TierGroup | None = None,
        *,
        shadow: bool = False,
        charged: object = _UNDECIDED,
    ) -> Fields | None:
        """Charge ``hits`` (one per tier of ``tiers``) in one store call, all or nothing.

        The fields to send when the request goes on (none when the store failed open or
        fields are off), None when it was answered: 429, or 503 for a tier failing closed.
        ``group`` lends its policy field when every tier of it applies. ``shadow`` (the
        replay tier in global shadow mode): decided and counted, never refused.
        ``charged``: the store's answer to ``hits`` when they were charged already (with the
        idempotency claim, `Gate.charged`), to be checked and answered alone."""
        try:
            decisions = (
                await timed(self.observer, self._backend, "hit", self.store.hit(hits))
                if charged is _UNDECIDED
                else cast(list[RateLimitDecision], charged)  # checked by all_allowed
            )
            allowed = all_allowed(decisions, len(hits))
        except Exception as exc:
            # a limiter must never be the reason for a 500: every store fault is a store error
            store_failures.warning(f"rate-limit store failed ({type(exc).__name__})")
            return NO_FIELDS if await self._failed(scope, send, tiers) else None
        if shadow:
            if not allowed:
                logger.info("shadow tier %s would limit key %s", tiers[0].name, hits[0].key)
            if self._observe:
                self.observer.rate_limit(
                    scope, tiers[0].name, "allowed" if allowed else "would_limit"
                )
            return NO_FIELDS
        if self._observe:
            for tier, decision in zip(tiers, decisions, strict=True):
                self.observer.rate_limit(
                    scope, tier.name, "allowed" if decision.allowed else "limited"
                )
        if not allowed:
            refused = [
                (t.name, t.limit_prefix, t.limit, d)
                for t, d in zip(tiers, decisions, strict=True)
                if not d.allowed
            ]
            policy = b", ".join([t.policy for t in tiers]) if self._headers else None
            await send_denied(scope, send, refused, policy, legacy=self._legacy)
            return None
        if not self._headers:
            return NO_FIELDS
        policy = (
            group.policy
            if group is not None and len(tiers) == len(group.tiers)
            else b", ".join([tier.policy for tier in tiers])
        )
        items: list[LimitItem] = [
            (d.remaining, -(-d.reset_ms // 1000), t.limit_prefix, t.limit)  # `seconds`, inline
            for t, d in zip(tiers, decisions)  # noqa: B905 - equal lengths by the store contract
        ]
        return rate_fields(policy, items, legacy=self._legacy)

    async def _failed(self, scope: Scope, send: Send, tiers: list[PreparedTier]) -> bool:
        """The store failed: True to go on without fields (nothing is known), unless a tier
        fails closed: then 503 is sent, and False."""
        closed = False
        for tier in tiers:
            self.observer.rate_limit(scope, tier.name, "store_error")
            closed = closed or not tier.fail_open
        if not closed:
            return True
        await send_unavailable(scope, send, self._unavailable_after)
        return False


async def _buffer(scope: Scope, receive: Receive, limit: int) -> tuple[bytes | None, Receive]:
    """Read the body for a JSON key, up to ``limit`` bytes, and a receive that replays it.

    A body over the limit is not an error here: it yields no body (the key falls back), and
    the handler still gets every byte, the part already read followed by the rest.
    """
    declared = header(scope, b"content-length")
    if declared is not None:
        declared = declared.strip()
        # a length of thousands of digits is too large, and too long for int() to parse
        if declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
            return None, receive
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            chunks.append(chunk)
        more = message.get("more_body", False)
        if size > limit:
            return None, replay_receive(b"".join(chunks), receive, more_body=more)
        if not more:
            body = b"".join(chunks)
            return body, replay_receive(body, receive)
