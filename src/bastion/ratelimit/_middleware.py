"""`RateLimitMiddleware`: tiered limits decided in one store call per request."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import cast

from bastion._asgi import ClientDisconnected, header, replay_receive
from bastion._logging import ThrottledLogger
from bastion._paths import normal_method, normal_path
from bastion.exceptions import ConfigurationError
from bastion.observe import NULL_OBSERVER, Observer, timed
from bastion.ratelimit._answers import QUOTA_EXCEEDED, all_allowed, send_denied, send_unavailable
from bastion.ratelimit._featured import Featured
from bastion.ratelimit._gate import Gate, idempotency_inside
from bastion.ratelimit._headers import (
    LimitItem,
    limit_prefix,
    policy_item,
    rate_fields,
)
from bastion.ratelimit._proxies import AddressResolver
from bastion.ratelimit._settings import RateLimitSettings
from bastion.ratelimit._tiers import Tier, compile_routes
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

HIT_CACHE_SIZE = 4096
"""Hits kept per tier for keys seen recently; the cache is emptied whenever it fills."""

Fields = Sequence[tuple[bytes, bytes]]
NO_FIELDS: Fields = ()
_UNDECIDED = object()


class _Tier:
    """A tier with everything a request needs precomputed."""

    __slots__ = (
        "algorithm",
        "concurrency",
        "cost",
        "cost_of",
        "count_when",
        "everything",
        "exact",
        "fail_open",
        "featured",
        "hits",
        "key",
        "limit",
        "limit_prefix",
        "methods",
        "name",
        "needs_body",
        "overrides",
        "pattern",
        "policy",
        "prefix",
        "shadow",
        "unit",
        "window",
        "window_ms",
    )

    def __init__(self, tier: Tier, fail_open: bool, shadow: bool = False) -> None:
        matcher = compile_routes(tier.routes)
        self.everything = matcher.everything
        self.exact = matcher.exact
        self.pattern = matcher.pattern
        self.name = tier.name
        self.methods = tier.methods
        self.key = tier.key
        self.needs_body = bool(tier.key.needs_body) or bool(getattr(tier.cost, "needs_body", False))
        self.prefix = tier.name + ":"
        self.algorithm = tier.algorithm
        self.limit = tier.limit
        self.window = None if tier.concurrency else tier.window
        self.window_ms = tier.window_ms
        # a computed cost (cost_of) is asked per request; `cost` is then a placeholder
        self.cost_of = None if isinstance(tier.cost, int) else tier.cost
        self.cost = tier.cost if isinstance(tier.cost, int) else 1
        self.fail_open = fail_open if tier.fail_open is None else tier.fail_open
        self.limit_prefix = limit_prefix(tier.name)
        self.unit = tier.unit
        self.policy = policy_item(tier.name, tier.limit, self.window, tier.unit)
        self.shadow = shadow or tier.shadow
        when = tier.count_when
        self.count_when = when.__contains__ if isinstance(when, frozenset) else when
        self.overrides = tier.overrides
        self.concurrency = tier.concurrency
        self.featured = bool(
            self.shadow
            or self.cost_of is not None
            or self.count_when is not None
            or self.overrides is not None
            or self.concurrency
        )
        # the same key asks for the same (immutable) hit every time: build it once
        self.hits: dict[str, RateLimitHit] = {}

    def hit(self, key: str) -> RateLimitHit:
        """Build and cache the hit for ``key`` (the middleware looks in ``hits`` first)."""
        if len(self.hits) >= HIT_CACHE_SIZE:
            self.hits.clear()
        hit = self.hits[key] = RateLimitHit(
            self.prefix + key, self.algorithm, self.limit, self.window_ms, self.cost
        )
        return hit


class _Group:
    """The tiers that may apply to one method, and their policy field when all of them do."""

    __slots__ = ("featured", "policy", "tiers")

    def __init__(self, tiers: tuple[_Tier, ...]) -> None:
        self.tiers = tiers
        self.policy = b", ".join(tier.policy for tier in tiers)
        # any tier using shadow mode, a computed cost, overrides, count_when or concurrency
        # sends the request down the longer path; without them the path is as it always was
        self.featured = any(tier.featured for tier in tiers)


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
        tiers = [_Tier(tier, settings.fail_open, settings.shadow) for tier in settings.tiers]
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
            None if replay is None else _Tier(replay, settings.fail_open, settings.shadow)
        )
        # tiers by method, so a request only looks at the tiers that can apply to it
        pairs = list(zip(tiers, settings.tiers, strict=True))
        methods = {method for tier in settings.tiers for method in tier.methods}
        self._any_method = _Group(tuple(t for t, s in pairs if not s.methods))
        self._by_method = {
            method: _Group(tuple(t for t, s in pairs if not s.methods or method in s.methods))
            for method in methods
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = normal_path(scope["path"])
        method = normal_method(scope["method"])
        group = self._by_method.get(method, self._any_method)
        applicable: list[_Tier] = []
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
        self, view: RequestView, tiers: list[_Tier]
    ) -> tuple[list[RateLimitHit], list[_Tier]]:
        """The hit of each tier that finds a key for the request, and those tiers."""
        hits: list[RateLimitHit] = []
        keyed: list[_Tier] = []
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
        tiers: list[_Tier],
        hits: list[RateLimitHit],
        group: _Group | None = None,
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

    async def _failed(self, scope: Scope, send: Send, tiers: list[_Tier]) -> bool:
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
