"""The one hook interface through which middleware report their decisions.

Middleware call an `Observer` and never import prometheus_client or opentelemetry themselves;
`bastion.metrics` provides observers that turn these calls into metrics and span events. The
default `NULL_OBSERVER` does nothing and costs one attribute lookup and call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from time import perf_counter
from typing import Literal, Protocol, TypeVar

from bastion.typing import Scope

__all__ = [
    "NULL_OBSERVER",
    "IdempotencyOutcome",
    "MultiObserver",
    "NullObserver",
    "Observer",
    "RateLimitOutcome",
    "timed",
]

IdempotencyOutcome = Literal[
    "stored",
    "replayed",
    "conflict_in_flight",
    "payload_mismatch",
    "released",
    "store_error",
    "missing_key",
    "invalid_key",
    "request_too_large",
    "lease_lost",
    "record_unreadable",
]
RateLimitOutcome = Literal["allowed", "limited", "would_limit", "store_error"]
"""``would_limit``: a shadow tier would have refused the request, which went through."""

T = TypeVar("T")


class Observer(Protocol):
    """Receives every decision; implementations must be cheap and must not raise.

    An observer may also have these optional methods, looked up once when a middleware is
    built (an observer without them costs nothing for them), so that the idempotency
    middleware can link a replay's span to the span of the request it replays:

    - ``claimed(scope) -> None``: a keyed request took its key and its handler runs now;
    - ``span_context(scope) -> bytes | None``: the current span's context, 25 bytes (trace id,
      span id, trace flags), stored with the response; None when no trace is recorded;
    - ``replayed_from(scope, context: bytes) -> None``: the current request is a replay of the
      response stored with ``context``.
    """

    def idempotency(self, scope: Scope, outcome: IdempotencyOutcome) -> None: ...

    def rate_limit(self, scope: Scope, tier: str, outcome: RateLimitOutcome) -> None: ...

    def store_call(self, backend: str, operation: str, seconds: float, *, error: bool) -> None: ...


class NullObserver:
    """Ignores everything; the default."""

    def idempotency(self, scope: Scope, outcome: IdempotencyOutcome) -> None:
        return None

    def rate_limit(self, scope: Scope, tier: str, outcome: RateLimitOutcome) -> None:
        return None

    def store_call(self, backend: str, operation: str, seconds: float, *, error: bool) -> None:
        return None


NULL_OBSERVER = NullObserver()


class MultiObserver:
    """Fans every call out to several observers (Prometheus and OpenTelemetry, say)."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self._observers = tuple(observers)

    def idempotency(self, scope: Scope, outcome: IdempotencyOutcome) -> None:
        for observer in self._observers:
            observer.idempotency(scope, outcome)

    def rate_limit(self, scope: Scope, tier: str, outcome: RateLimitOutcome) -> None:
        for observer in self._observers:
            observer.rate_limit(scope, tier, outcome)

    def store_call(self, backend: str, operation: str, seconds: float, *, error: bool) -> None:
        for observer in self._observers:
            observer.store_call(backend, operation, seconds, error=error)

    def claimed(self, scope: Scope) -> None:
        for observer in self._observers:
            hook = getattr(observer, "claimed", None)
            if hook is not None:
                hook(scope)

    def span_context(self, scope: Scope) -> bytes | None:
        """The first context an observer gives."""
        for observer in self._observers:
            hook = getattr(observer, "span_context", None)
            context = None if hook is None else hook(scope)
            if context is not None:
                return context  # type: ignore[no-any-return]
        return None

    def replayed_from(self, scope: Scope, context: bytes) -> None:
        for observer in self._observers:
            hook = getattr(observer, "replayed_from", None)
            if hook is not None:
                hook(scope, context)


def timed(observer: Observer, backend: str, operation: str, call: Awaitable[T]) -> Awaitable[T]:
    """``call`` (a store call not yet awaited), reporting its latency once awaited; for the null
    observer, ``call`` itself, so the common case adds neither a clock read nor a frame."""
    if observer is NULL_OBSERVER:
        return call
    return _timed(observer, backend, operation, call)


async def _timed(observer: Observer, backend: str, operation: str, call: Awaitable[T]) -> T:
    start = perf_counter()
    try:
        result = await call
    except BaseException:
        observer.store_call(backend, operation, perf_counter() - start, error=True)
        raise
    observer.store_call(backend, operation, perf_counter() - start, error=False)
    return result
