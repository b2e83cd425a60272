"""Frozen settings objects, each loadable from environment variables.

Every field of a settings dataclass can be overridden with ``<PREFIX><FIELD_NAME>`` in upper
case: ``BASTION_IDEMPOTENCY_TTL_SECONDS=3600``. Booleans accept 1/0, true/false, yes/no, on/off;
collections are comma-separated. A value that does not parse raises ``ConfigurationError``
naming the variable, at start-up rather than on the first request.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from collections.abc import Mapping
from typing import Any, Self

from bastion.exceptions import ConfigurationError
from bastion.ratelimit.proxies import parse_networks
from bastion.ratelimit.tiers import Tier

__all__ = ["EnvSettings", "IdempotencySettings", "RateLimitSettings"]

_TRUE = {"1", "true", "yes", "on"}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FALSE = {"0", "false", "no", "off"}


def _parse(raw: str, kind: Any, name: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if raw.strip().lower() in {"", "none", "null"}:
            return None
        return _parse(raw, args[0], name)
    if kind is bool:
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise ConfigurationError(f"{name}={raw!r} is not a boolean (use true or false)")
    if kind in (int, float):
        try:
            return kind(raw.strip())
        except ValueError:
            raise ConfigurationError(f"{name}={raw!r} is not a {kind.__name__}") from None
    if kind is str:
        return raw
    if origin in (tuple, frozenset):
        items = [item.strip() for item in raw.split(",") if item.strip()]
        (inner, *_) = typing.get_args(kind)
        return origin(_parse(item, inner, name) for item in items)
    raise ConfigurationError(f"{name} cannot be set from the environment")


class EnvSettings:
    """Mixin giving a frozen dataclass a ``from_env`` constructor."""

    ENV_PREFIX: typing.ClassVar[str] = "BASTION_"

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        prefix: str | None = None,
        **overrides: Any,
    ) -> Self:
        """Build settings from defaults, then the environment, then ``overrides``."""
        environ = os.environ if environ is None else environ
        prefix = cls.ENV_PREFIX if prefix is None else prefix
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):  # type: ignore[arg-type]
            if not field.init or field.name in overrides:
                continue
            name = f"{prefix}{field.name.upper()}"
            if name in environ:
                values[field.name] = _parse(environ[name], hints[field.name], name)
        values.update(overrides)
        return cls(**values)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class IdempotencySettings(EnvSettings):
    """How `IdempotencyMiddleware` treats requests; environment prefix ``BASTION_IDEMPOTENCY_``.

    Paths are matched with shell-style patterns (``/api/*``) against the raw path, since the
    middleware decides before any router has run.
    """

    ENV_PREFIX: typing.ClassVar[str] = "BASTION_IDEMPOTENCY_"

    methods: frozenset[str] = frozenset({"POST", "PUT", "PATCH", "DELETE"})
    """Methods the middleware applies to; every other method passes straight through."""
    include: tuple[str, ...] = ("*",)
    """Path patterns the middleware applies to."""
    exclude: tuple[str, ...] = ()
    """Path patterns it never applies to, even when included."""
    require_key: tuple[str, ...] = ()
    """Path patterns where a request without a key is refused with 400."""
    header_name: str = "Idempotency-Key"
    """The request header that carries the key; the IETF draft's name by default."""
    max_key_length: int = 255
    """Longer keys get 400, so a client cannot make huge store keys."""
    ttl_seconds: float = 86_400.0
    """How long a completed response is kept for replay."""
    lease_seconds: float = 30.0
    """How long a first request holds the key before a crash is assumed; renewed while running."""
    max_request_bytes: int = 1_048_576
    """Request bodies are buffered to fingerprint them; larger ones get 413."""
    max_response_bytes: int = 1_048_576
    """Larger responses are sent but not stored: the key is released so a retry runs again."""
    release_statuses: frozenset[int] = frozenset({408, 429})
    """Answers that say "not now" rather than "done": never stored, so a retry runs again."""
    store_server_errors: bool = False
    """Store 5xx answers too, instead of releasing the key so a retry can run again."""
    conflict_retry_after_seconds: int = 1
    """``Retry-After`` on a 409 while the first request runs: a short hint, since most
    handlers finish in well under a second; never more than the holder's remaining lease."""
    wait: bool = False
    """A duplicate that arrives while the first is in flight waits for its replay instead of 409."""
    wait_timeout_seconds: float = 10.0
    """How long a waiting duplicate waits before it gets the 409 after all."""
    fail_open: bool = False
    """When the store fails: run the request unprotected (True) or answer 503 (False)."""

    def __post_init__(self) -> None:
        if self.max_key_length < 1 or self.max_key_length > 4096:
            raise ConfigurationError("max_key_length must be between 1 and 4096")
        for name in ("ttl_seconds", "lease_seconds", "wait_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be positive")
        if self.lease_seconds < 0.05:
            raise ConfigurationError("lease_seconds must be at least 0.05")
        if not _TOKEN.fullmatch(self.header_name):
            raise ConfigurationError(f"header_name {self.header_name!r} is not an HTTP field name")
        if self.lease_seconds > self.ttl_seconds:
            raise ConfigurationError("lease_seconds cannot exceed ttl_seconds")
        if self.conflict_retry_after_seconds < 1:
            raise ConfigurationError("conflict_retry_after_seconds must be at least 1")
        if self.max_request_bytes < 0 or self.max_response_bytes < 0:
            raise ConfigurationError("byte limits cannot be negative")
        object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))

    def keeps(self, status: int) -> bool:
        """Whether a response with this status is stored for replay; if not, the key is
        released so that a retry runs the request again."""
        if status in self.release_statuses:
            return False
        return status < 500 or self.store_server_errors


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitSettings(EnvSettings):
    """How `RateLimitMiddleware` limits requests; environment prefix ``BASTION_RATELIMIT_``.

    ``tiers`` is the policy: every tier whose routes and methods match a request applies, and
    the request passes only if all of them allow it. Tiers are built in code (the presets are
    one-liners: ``RateLimitSettings(tiers=presets())``); every other field can come from the
    environment.
    """

    ENV_PREFIX: typing.ClassVar[str] = "BASTION_RATELIMIT_"

    tiers: tuple[Tier, ...] = ()
    """The policy: every tier whose routes and methods match a request applies to it."""
    fail_open: bool = True
    """When the store fails: let requests through and count the fault (True), or answer 503.
    Open by default because a limiter protects capacity, and an outage of its store should not
    take down every route, health checks included; a tier guarding against abuse (sign-ups,
    credential stuffing) can say ``fail_open=False`` for itself."""
    headers: bool = True
    """Send the ``RateLimit-Policy`` and ``RateLimit`` fields on every limited response."""
    legacy_headers: bool = False
    """Also send ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset``."""
    trusted_proxies: tuple[str, ...] = ()
    """Addresses or networks of your reverse proxies; only their forwarding headers count."""
    proxy_header: str = "x-forwarded-for"
    """The forwarding header your proxies set: ``x-forwarded-for`` or ``forwarded`` (RFC 7239).
    Only that one is read, so a client cannot slip a forged one past a proxy that sets the
    other."""
    ipv6_prefix_length: int = 64
    """IPv6 clients are limited per network of this size, since one host owns a whole /64."""
    max_body_bytes: int = 65_536
    """Largest body buffered for a JSON-field key; a larger one falls back to the next key."""
    store_error_retry_after: int = 1
    """``Retry-After`` seconds on the 503 sent when the store fails and a tier fails closed."""

    def __post_init__(self) -> None:
        tiers = tuple(self.tiers)
        if not all(isinstance(tier, Tier) for tier in tiers):
            raise ConfigurationError("tiers must be Tier instances")
        names = [tier.name for tier in tiers]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"tier names must be unique: {names}")
        object.__setattr__(self, "tiers", tiers)
        parse_networks(self.trusted_proxies)
        proxy_header = self.proxy_header.strip().lower()
        if proxy_header not in {"x-forwarded-for", "forwarded"}:
            raise ConfigurationError("proxy_header must be 'x-forwarded-for' or 'forwarded'")
        object.__setattr__(self, "proxy_header", proxy_header)
        if not 0 <= self.ipv6_prefix_length <= 128:
            raise ConfigurationError("ipv6_prefix_length must be between 0 and 128")
        if self.max_body_bytes < 0:
            raise ConfigurationError("max_body_bytes cannot be negative")
        if self.store_error_retry_after < 0:
            raise ConfigurationError("store_error_retry_after cannot be negative")
