"""`Tier`: one quota (limit per window, per key) on a set of routes, and the ready-made presets.

A policy is a tuple of tiers in `RateLimitSettings`. Every tier whose selector matches a request
applies to it; the request passes only if all of them allow it, and a denied request is charged
to none of them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, get_args

from bastion._paths import normal_path
from bastion.exceptions import ConfigurationError
from bastion.ratelimit._overrides import LimitOverrides
from bastion.ratelimit.costs import Cost
from bastion.ratelimit.keys import (
    CLIENT_ADDRESS,
    KeyExtractor,
    first_of,
    json_field,
    query_param,
)
from bastion.stores._protocols import Algorithm

__all__ = ["RouteMatcher", "Tier", "compile_routes", "presets"]

ALGORITHMS = frozenset(get_args(Algorithm))
_UNIT = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_]+))?}")
_CONVERTORS = {
    "str": "[^/]+",
    "int": "[0-9]+",
    "float": r"[0-9]+(?:\.[0-9]+)?",
    "uuid": "[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}",
    "path": ".*",
}


@dataclass(frozen=True, slots=True)
class RouteMatcher:
    """Exact paths in a set, route templates in one regex; ``everything`` when no routes.

    Both hold normalised paths (`bastion._paths.normal_path`), so they are asked with a
    normalised one.
    """

    everything: bool
    exact: frozenset[str]
    pattern: re.Pattern[str] | None

    def __call__(self, path: str) -> bool:
        path = normal_path(path)
        if self.everything or path in self.exact:
            return True
        return self.pattern is not None and self.pattern.fullmatch(path) is not None


def compile_routes(routes: Iterable[str]) -> RouteMatcher:
    """Compile route templates once: ``/users/{id}``, ``/files/{name:path}``, ``/items/{n:int}``.

    The middleware runs before any router, so it matches these against the request path in
    the form routers use (repeated slashes collapsed, no trailing slash), with the convertors
    Starlette and FastAPI use (``str``, ``int``, ``float``, ``uuid``, ``path``). Routes are
    normalised the same way, so ``/pay/`` and ``/pay`` select the same requests, and a
    ``/{name:path}`` segment also matches when the path it captures is empty (``/files/``,
    which normalises to ``/files``).
    """
    routes = tuple(routes)
    exact: set[str] = set()
    regexes: list[str] = []
    for given in routes:
        if not given.startswith("/"):
            raise ConfigurationError(f"route {given!r} must start with '/'")
        route = normal_path(given)
        if "{" not in route and "}" not in route:
            exact.add(route)
            continue
        parts: list[str] = []
        position = 0
        for match in [*_PARAM.finditer(route), None]:
            literal = route[position : match.start() if match else len(route)]
            if "{" in literal or "}" in literal:
                raise ConfigurationError(f"route {given!r} has a malformed {{parameter}}")
            if match is None:
                parts.append(re.escape(literal))
                break
            convertor = match.group(2) or "str"
            if convertor not in _CONVERTORS:
                raise ConfigurationError(f"route {given!r}: unknown convertor {convertor!r}")
            if convertor == "path" and literal.endswith("/"):
                # an empty capture leaves a slash that normalisation removes: make it optional
                parts.append(re.escape(literal[:-1]) + "(?:/.*)?")
            else:
                parts.append(re.escape(literal) + f"(?:{_CONVERTORS[convertor]})")
            position = match.end()
        regexes.append("".join(parts))
    pattern = re.compile("|".join(f"(?:{r})" for r in regexes)) if regexes else None
    return RouteMatcher(not routes, frozenset(exact), pattern)


@dataclass(frozen=True, slots=True, kw_only=True)
class Tier:
    """A quota: at most ``limit`` units per ``window`` seconds for each key, on some routes.

    ``algorithm`` is ``fixed_window`` (windows aligned to the clock; cheap, but allows up to
    twice the limit across a boundary), ``sliding_window`` (the default: the previous window's
    count weighted by its overlap, smooth and still O(1)) or ``gcra`` (a token bucket of
    ``limit`` tokens refilled evenly over ``window``: bursts up to ``limit``, then a steady
    rate). ``key`` picks the bucket (`bastion.ratelimit.keys`; the client address by default).
    ``routes`` are exact paths or route templates (all paths when empty) and ``methods`` the
    HTTP methods (all when empty). ``cost`` is what one request spends. ``fail_open``, when
    set, overrides the settings' choice for this tier when the store fails.

    ``name`` appears in response headers, problem bodies, metrics and store keys, so it is kept
    to letters, digits, ``_``, ``.`` and ``-``.
    """

    name: str
    limit: int
    window: int
    """Seconds; whole seconds, as the ``w`` of the RateLimit-Policy field requires."""
    algorithm: Algorithm = "sliding_window"
    key: KeyExtractor = CLIENT_ADDRESS
    routes: tuple[str, ...] = ()
    methods: frozenset[str] = frozenset()
    cost: int | Cost = 1
    """What one request spends: an integer, or a `bastion.ratelimit.costs` function."""
    fail_open: bool | None = None
    unit: str | None = None
    """The quota unit, the ``qu`` of RateLimit-Policy: None takes the cost function's
    (``content-bytes`` for `costs.content_length`), else the draft's default, ``requests``,
    which is not written. ``requests``, ``content-bytes`` and ``concurrent-requests`` are the
    draft's registered units; another is allowed for a private API."""
    shadow: bool = False
    """Decide, count (``outcome="would_limit"``) and log, but never refuse a request or send
    this tier's fields; see the shadow-mode section of docs/rate-limiting.md."""
    count_when: Collection[int] | Callable[[int], bool] | None = None
    """Charge only responses whose status is in this collection (or for which this function
    is true), after the response; a request is refused while the bucket is exhausted."""
    overrides: LimitOverrides | None = None
    """Per-key limits from a provider (a plan lookup); the static ``limit`` is the fallback."""
    concurrency: bool = False
    """Limit requests in flight instead of requests per window (`Tier.concurrent`)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigurationError(
                f"tier name {self.name!r} must be 1-64 letters, digits, '_', '.' or '-'"
            )
        static = isinstance(self.cost, int)
        numbers: list[tuple[str, object]] = [("limit", self.limit), ("window", self.window)]
        if static:
            numbers.append(("cost", self.cost))
        for field, value in numbers:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"tier {self.name!r}: {field} must be an integer >= 1")
        if not static and not (callable(self.cost) and hasattr(self.cost, "needs_body")):
            raise ConfigurationError(
                f"tier {self.name!r}: cost must be an integer or a bastion.ratelimit.costs function"
            )
        if static and self.cost > self.limit:  # type: ignore[operator]
            raise ConfigurationError(f"tier {self.name!r}: cost exceeds the limit")
        unit = self.unit if self.unit is not None else getattr(self.cost, "unit", None)
        if self.concurrency:
            unit = "concurrent-requests"
            if self.unit not in (None, unit) or self.cost != 1 or self.count_when is not None:
                raise ConfigurationError(
                    f"tier {self.name!r}: a concurrency tier takes no unit, cost or count_when"
                )
        if unit is not None and not (isinstance(unit, str) and _UNIT.fullmatch(unit)):
            raise ConfigurationError(
                f"tier {self.name!r}: unit must be lower-case letters, digits and '-'"
            )
        object.__setattr__(self, "unit", unit)
        when: object = self.count_when
        if when is not None and not callable(when):
            statuses = frozenset(when)  # type: ignore[call-overload]
            if not statuses or not all(
                isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in statuses
            ):
                raise ConfigurationError(
                    f"tier {self.name!r}: count_when must hold HTTP statuses or be a function"
                )
            object.__setattr__(self, "count_when", statuses)
        if self.overrides is not None and not isinstance(self.overrides, LimitOverrides):
            raise ConfigurationError(f"tier {self.name!r}: overrides must be a LimitOverrides")
        if self.algorithm not in ALGORITHMS:
            raise ConfigurationError(
                f"tier {self.name!r}: algorithm must be one of {sorted(ALGORITHMS)}"
            )
        if not callable(self.key) or not hasattr(self.key, "needs_body"):
            raise ConfigurationError(
                f"tier {self.name!r}: key must be an extractor from bastion.ratelimit.keys"
            )
        given: object = self.routes  # a lone string is one route, not a tuple of characters
        routes = (given,) if isinstance(given, str) else tuple(self.routes)
        compile_routes(routes)
        object.__setattr__(self, "routes", routes)
        given_methods: object = self.methods
        methods = (given_methods,) if isinstance(given_methods, str) else self.methods
        object.__setattr__(self, "methods", frozenset(m.upper() for m in methods))

    @property
    def window_ms(self) -> int:
        return self.window * 1000

    @classmethod
    def concurrent(cls, name: str, limit: int, **options: Any) -> Tier:
        """At most ``limit`` requests of a key in flight at once (``qu="concurrent-requests"``,
        no window): each holds a slot, a lease renewed while it runs and given back when its
        response ends or its client leaves; a worker that dies stops renewing, and its slots
        free themselves when the lease runs out (``RateLimitSettings.concurrency_lease``)."""
        return cls(name=name, limit=limit, window=1, concurrency=True, **options)

    # -- presets from the original plan ------------------------------------------------------

    @classmethod
    def register(cls, *, environ: Mapping[str, str] | None = None, **overrides: Any) -> Tier:
        """Sign-ups: 5 per hour per client address (``RL_REGISTER_PER_HOUR``)."""
        return cls._preset(
            overrides,
            name="register",
            limit=_env_limit(environ, "RL_REGISTER_PER_HOUR", 5),
            window=3600,
            routes=("/api/register",),
            methods=frozenset({"POST"}),
        )

    @classmethod
    def claim(cls, *, environ: Mapping[str, str] | None = None, **overrides: Any) -> Tier:
        """Claims: 60 per hour per wallet (``RL_CLAIM_PER_HOUR``).

        The wallet is the JSON body's ``wallet``, else the ``wallet`` query parameter, else the
        client address; a wallet counts against one bucket whichever of the two carries it,
        and whatever the case of its hex digits.
        """
        return cls._preset(
            overrides,
            name="claim",
            limit=_env_limit(environ, "RL_CLAIM_PER_HOUR", 60),
            window=3600,
            key=first_of(json_field("wallet"), query_param("wallet"), name="wallet"),
            routes=("/api/claim/prepare", "/api/claim/record"),
            methods=frozenset({"POST"}),
        )

    @classmethod
    def webhook(cls, *, environ: Mapping[str, str] | None = None, **overrides: Any) -> Tier:
        """Webhooks: 100 per minute per event id (``RL_WEBHOOK_PER_MIN``).

        The event id is the JSON body's ``event.id``, else the client address.
        """
        return cls._preset(
            overrides,
            name="webhook",
            limit=_env_limit(environ, "RL_WEBHOOK_PER_MIN", 100),
            window=60,
            key=json_field("event.id"),
            routes=("/api/commerce/webhook",),
            methods=frozenset({"POST"}),
        )

    @classmethod
    def health(cls, *, environ: Mapping[str, str] | None = None, **overrides: Any) -> Tier:
        """Probes: a generous 600 per minute per client address (``RL_HEALTH_PER_MIN``)."""
        return cls._preset(
            overrides,
            name="health",
            limit=_env_limit(environ, "RL_HEALTH_PER_MIN", 600),
            window=60,
            routes=("/healthz", "/readyz"),
            methods=frozenset({"GET", "HEAD"}),
        )

    @classmethod
    def _preset(cls, overrides: dict[str, Any], **defaults: Any) -> Tier:
        return cls(**{**defaults, **overrides})


def presets(environ: Mapping[str, str] | None = None) -> tuple[Tier, ...]:
    """The four presets of the original plan: register, claim, webhook and health."""
    return (
        Tier.register(environ=environ),
        Tier.claim(environ=environ),
        Tier.webhook(environ=environ),
        Tier.health(environ=environ),
    )


def _env_limit(environ: Mapping[str, str] | None, name: str, default: int) -> int:
    environ = os.environ if environ is None else environ
    raw = environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not an integer") from None
    if value < 1:
        raise ConfigurationError(f"{name}={raw!r} must be at least 1")
    return value
