"""`Tier`: one quota (limit per window, per key) on a set of routes, and the ready-made presets.

A policy is a tuple of tiers in `RateLimitSettings`. Every tier whose selector matches a request
applies to it; the request passes only if all of them allow it, and a denied request is charged
to none of them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, get_args

from bastion._paths import normal_path
from bastion.exceptions import ConfigurationError
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
    cost: int = 1
    fail_open: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigurationError(
                f"tier name {self.name!r} must be 1-64 letters, digits, '_', '.' or '-'"
            )
        for field, value in (("limit", self.limit), ("window", self.window), ("cost", self.cost)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"tier {self.name!r}: {field} must be an integer >= 1")
        if self.cost > self.limit:
            raise ConfigurationError(f"tier {self.name!r}: cost exceeds the limit")
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
