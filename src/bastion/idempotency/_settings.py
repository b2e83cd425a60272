"""`IdempotencySettings`: how the idempotency middleware treats requests."""

from __future__ import annotations

import dataclasses
import typing

from bastion._settings import TOKEN, EnvSettings
from bastion.exceptions import ConfigurationError

__all__ = ["IdempotencySettings"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class IdempotencySettings(EnvSettings):
    """How `IdempotencyMiddleware` treats requests; environment prefix ``BASTION_IDEMPOTENCY_``.

    Paths are matched with shell-style patterns (``/api/*``) before any router has run, so
    against the path in the form routers match it (repeated slashes collapsed, no trailing
    slash; `bastion._paths`), and methods case-insensitively.
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
    release_statuses: frozenset[int] = frozenset({307, 308, 408, 429})
    """Answers that say "not now" or "not here" rather than "done": never stored, so a retry
    (or the redirected request, which carries the same key) runs again."""
    store_server_errors: bool = False
    """Store 5xx answers too, instead of releasing the key so a retry can run again."""
    conflict_retry_after_seconds: int = 1
    """``Retry-After`` on a 409 while the first request may still be running (its lease shows
    it renewing): a short hint, since most handlers finish in well under a second; never
    more than the holder's remaining lease. A holder that missed its renewal gets no hint:
    the 409 says when its lease runs out."""
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
        if not TOKEN.fullmatch(self.header_name):
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
