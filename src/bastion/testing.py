"""Helpers for testing your own app behind bastion's middleware.

- `FakeClock`: time you move by hand, given to a store as its ``clock=`` so leases, records
  and rate-limit windows expire without sleeping.
- `FaultyStore`: wraps any store and makes chosen primitives fail or hang on demand, to test
  what your app answers while the backend is down or slow.
- `assert_replayed`, `assert_conflict`, `assert_mismatch`, `assert_rate_limited`: check an
  ``httpx.Response`` is the answer bastion gives for a replay, a 409, a 422 and a 429.

Nothing here needs pytest; the assertions raise `AssertionError` with a message saying what
differed, so they work under any test runner (and are not stripped by ``python -O``).
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from bastion._asgi import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_PREFIX
from bastion._core.types import Claim, RateLimitDecision, RateLimitHit
from bastion.exceptions import StoreUnavailable
from bastion.ratelimit._headers import sf_string
from bastion.ratelimit._middleware import QUOTA_EXCEEDED

if TYPE_CHECKING:
    import httpx

__all__ = [
    "PRIMITIVES",
    "FakeClock",
    "FaultyStore",
    "Hang",
    "assert_conflict",
    "assert_mismatch",
    "assert_rate_limited",
    "assert_replayed",
]

PRIMITIVES = ("claim", "renew", "complete", "release", "hit", "ping")
"""The store primitives `FaultyStore` can make fail or hang."""

_REPLAYED = "idempotent-replayed"
_PROBLEM = PROBLEM_CONTENT_TYPE.decode()
_RATELIMIT_ITEM = re.compile(r'"((?:[^"\\]|\\.)*)";r=(\d+);t=(\d+)')


class FakeClock:
    """A clock tests move by hand: seconds as a float, like `time.time`.

    Pass it as a store's ``clock=`` (``MemoryStore(clock=clock)``) and call `advance` to let
    a lease run out, a record expire or a rate-limit window pass, with no sleep.
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        """The current time in seconds; set it directly to jump anywhere."""

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward; a clock that runs backwards would hide expiry bugs."""
        if seconds < 0:
            raise ValueError("a FakeClock only moves forward; use step_back for a clock jump")
        self.now += seconds

    def step_back(self, seconds: float) -> None:
        """Jump back, as a wall clock does after an NTP step or a restored VM snapshot: a
        store must neither expire anything early nor hand a held key to a second claim."""
        if seconds < 0:
            raise ValueError("step_back takes a positive number of seconds")
        self.now -= seconds


class Hang:
    """One hung primitive: calls wait at it until `release`.

    ``entered`` is set once a call is waiting, so a test knows the request reached the store
    before it checks what the app does meanwhile.
    """

    def __init__(self, until: anyio.Event | None = None) -> None:
        self.entered = anyio.Event()
        """Set when the first call starts waiting."""
        self.released = until if until is not None else anyio.Event()
        """Set by `release`; every waiting call then goes on to the wrapped store."""

    def release(self) -> None:
        """Let every waiting call (and every later one) through."""
        self.released.set()

    async def _wait(self) -> None:
        self.entered.set()
        await self.released.wait()


class _Fault:
    __slots__ = ("after", "error", "times")

    def __init__(
        self, error: BaseException | type[BaseException], times: int | None, after: bool
    ) -> None:
        self.error, self.times, self.after = error, times, after

    @property
    def exc(self) -> BaseException:
        """A fresh exception per call, so tracebacks do not pile up on one instance."""
        error = self.error
        if isinstance(error, type):
            return error()
        fresh = copy.copy(error)
        fresh.__traceback__ = None
        return fresh


class FaultyStore:
    """A store that fails or hangs on demand, in front of a real one.

    Every primitive goes to ``inner`` unless a fault is set for it::

        store = FaultyStore(MemoryStore())
        store.fail("claim")                      # StoreUnavailable on every claim
        store.fail("complete", after=True)       # stored, but the reply is lost
        hang = store.hang("hit")                 # rate-limit calls wait...
        hang.release()                           # ...until released
        store.heal()                             # back to normal

    ``calls`` counts the calls each primitive received, faults included. Attributes the
    wrapper does not define (``engine``, ``cleanup``…) are the inner store's.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self._faults: dict[str, _Fault] = {}
        self._hangs: dict[str, Hang] = {}

    suspends = True
    """A hung primitive waits, whatever the inner store does: claims must be shielded."""

    claims_with_hits = False
    """The middleware claim and charge apart, so a fault set on ``claim`` or on ``hit`` acts
    on its own even when the inner store joins the two (`bastion.stores.ClaimHitStore`)."""

    @property
    def backend(self) -> str:
        """The inner store's backend name, so metrics label it as usual."""
        return str(self.inner.backend)

    def fail(
        self,
        primitive: str,
        exc: BaseException | type[BaseException] | None = None,
        *,
        times: int | None = None,
        after: bool = False,
    ) -> None:
        """Make ``primitive`` raise ``exc``, an exception or its class (`StoreUnavailable`
        by default).

        ``times`` limits the fault to the next that many calls (every call when None).
        ``after=True`` runs the inner call first and then raises: the write happened but its
        answer was lost, the hardest case for a client.
        """
        _check(primitive)
        if times is not None and times < 1:
            raise ValueError("times must be at least 1")
        error = exc if exc is not None else StoreUnavailable(f"{primitive}: injected fault")
        self._faults[primitive] = _Fault(error, times, after)

    def hang(self, primitive: str, *, until: anyio.Event | None = None) -> Hang:
        """Make calls to ``primitive`` wait until the returned `Hang` is released (or
        ``until`` is set), then go on as usual. Cancelling the waiting request works as with
        a slow backend."""
        _check(primitive)
        hang = self._hangs[primitive] = Hang(until)
        return hang

    def heal(self, primitive: str | None = None) -> None:
        """Clear the faults of ``primitive`` (of every primitive when None) and release its
        hangs."""
        names = PRIMITIVES if primitive is None else (primitive,)
        for name in names:
            _check(name)
            self._faults.pop(name, None)
            hang = self._hangs.pop(name, None)
            if hang is not None:
                hang.release()

    async def _before(self, primitive: str) -> _Fault | None:
        self.calls[primitive] += 1
        hang = self._hangs.get(primitive)
        if hang is not None:
            await hang._wait()
        fault = self._faults.get(primitive)
        if fault is None:
            return None
        if fault.times is not None:
            fault.times -= 1
            if fault.times == 0:
                del self._faults[primitive]
        if not fault.after:
            raise fault.exc
        return fault

    # -- the primitives -------------------------------------------------------------------

    async def ping(self) -> None:
        fault = await self._before("ping")
        await self.inner.ping()
        if fault is not None:
            raise fault.exc

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def claim(self, key: str, fingerprint: str, token: str, *, lease_ms: int) -> Claim:
        fault = await self._before("claim")
        claim: Claim = await self.inner.claim(key, fingerprint, token, lease_ms=lease_ms)
        if fault is not None:
            raise fault.exc
        return claim

    async def renew(self, key: str, token: str, *, lease_ms: int) -> bool:
        fault = await self._before("renew")
        renewed = bool(await self.inner.renew(key, token, lease_ms=lease_ms))
        if fault is not None:
            raise fault.exc
        return renewed

    async def complete(self, key: str, token: str, response: bytes, *, ttl_ms: int) -> bool:
        fault = await self._before("complete")
        stored = bool(await self.inner.complete(key, token, response, ttl_ms=ttl_ms))
        if fault is not None:
            raise fault.exc
        return stored

    async def release(self, key: str, token: str) -> bool:
        fault = await self._before("release")
        released = bool(await self.inner.release(key, token))
        if fault is not None:
            raise fault.exc
        return released

    async def hit(self, hits: Sequence[RateLimitHit]) -> list[RateLimitDecision]:
        fault = await self._before("hit")
        decisions: list[RateLimitDecision] = await self.inner.hit(hits)
        if fault is not None:
            raise fault.exc
        return decisions

    def validate_hit(self, hit: RateLimitHit) -> None:
        validate = getattr(self.inner, "validate_hit", None)
        if validate is not None:
            validate(hit)

    def __getattr__(self, name: str) -> Any:
        # only reached for names the wrapper lacks: the inner store's extras
        if name.startswith("__") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def _check(primitive: str) -> None:
    if primitive not in PRIMITIVES:
        raise ValueError(f"unknown store primitive {primitive!r}; one of {', '.join(PRIMITIVES)}")


# -- response assertions ----------------------------------------------------------------------


def _fail(response: httpx.Response, message: str) -> AssertionError:
    body = response.content[:300].decode(errors="replace")
    return AssertionError(f"{message}\n  got {response.status_code} {response.headers!r}\n  {body}")


def _problem(response: httpx.Response, status: int, slug: str | None) -> dict[str, Any]:
    if response.status_code != status:
        raise _fail(response, f"expected status {status}")
    content_type = response.headers.get("content-type", "")
    if content_type.split(";")[0].strip() != _PROBLEM:
        raise _fail(response, f"expected a {_PROBLEM} body")
    try:
        problem = json.loads(response.content)
    except ValueError:
        raise _fail(response, "the problem body is not JSON") from None
    if not isinstance(problem, dict) or problem.get("status") != status:
        raise _fail(response, f"the problem body does not say status {status}")
    if slug is not None and problem.get("type") != PROBLEM_TYPE_PREFIX + slug:
        raise _fail(response, f"expected problem type {PROBLEM_TYPE_PREFIX + slug}")
    return problem


def assert_replayed(response: httpx.Response, first: httpx.Response) -> None:
    """``response`` is bastion's replay of ``first``: same status, same body bytes, same
    content type, marked ``Idempotent-Replayed: true``, and no ``Set-Cookie``.

    Other headers are not compared: middleware outside bastion's (rate limits, tracing) set
    theirs afresh on every response, replays included.
    """
    if response.headers.get(_REPLAYED) != "true":
        raise _fail(response, "expected a replay (Idempotent-Replayed: true)")
    if _REPLAYED in first.headers:
        raise _fail(first, "the first response is itself a replay; pass the original")
    if response.status_code != first.status_code:
        raise _fail(response, f"the replay's status differs from the first ({first.status_code})")
    if response.content != first.content:
        raise _fail(response, "the replay's body differs from the first response's")
    if response.headers.get("content-type") != first.headers.get("content-type"):
        raise _fail(response, "the replay's content type differs from the first response's")
    if "set-cookie" in response.headers:
        raise _fail(response, "a replay must never carry Set-Cookie")


def assert_conflict(response: httpx.Response) -> dict[str, Any]:
    """``response`` is the 409 for a duplicate that arrived while the first request was still
    running: problem+json and a ``Retry-After``. Returns the problem body."""
    problem = _problem(response, 409, "idempotency-key-in-flight")
    if not response.headers.get("retry-after", "").isdigit():
        raise _fail(response, "a 409 for a request in flight carries Retry-After in seconds")
    return problem


def assert_mismatch(response: httpx.Response) -> dict[str, Any]:
    """``response`` is the 422 for a key reused with another request (another body, route or
    method). Returns the problem body."""
    return _problem(response, 422, "idempotency-key-reused")


def assert_rate_limited(response: httpx.Response, *, policy: str | None = None) -> dict[str, Any]:
    """``response`` is a 429 from `RateLimitMiddleware`: problem+json naming the violated
    policies, an integer ``Retry-After`` no earlier than any ``t`` it reports, and (unless
    the middleware was built with ``headers=False``) the ``RateLimit`` and
    ``RateLimit-Policy`` fields.

    With ``policy`` (a tier name), that tier must be among the violated policies and, when
    the fields are sent, be declared in ``RateLimit-Policy`` and reported in ``RateLimit``
    with no quota left. Returns the problem body.
    """
    problem = _problem(response, 429, None)
    if problem.get("type") != QUOTA_EXCEEDED:
        raise _fail(response, f"expected the problem type {QUOTA_EXCEEDED}")
    violated = problem.get("violated-policies")
    if not isinstance(violated, list) or not violated:
        raise _fail(response, "the 429 body names no violated policies")
    retry_after = response.headers.get("retry-after", "")
    if not retry_after.isdigit():
        raise _fail(response, "a 429 carries Retry-After in whole seconds")
    if policy is not None and policy not in violated:
        raise _fail(response, f"policy {policy!r} is not among the violated ones {violated}")
    fields = response.headers.get("ratelimit")
    if fields is None:
        return problem
    declared = response.headers.get("ratelimit-policy", "")
    reported = {
        name.replace('\\"', '"').replace("\\\\", "\\"): (int(r), int(t))
        for name, r, t in _RATELIMIT_ITEM.findall(fields)
    }
    if not reported:
        raise _fail(response, "the RateLimit field has no item")
    if any(t > int(retry_after) for _, t in reported.values()):
        raise _fail(response, "Retry-After is earlier than a t the RateLimit field reports")
    if policy is not None:
        if sf_string(policy).decode() + ";q=" not in declared:
            raise _fail(response, f"RateLimit-Policy does not declare {policy!r}")
        if reported.get(policy, (None, 0))[0] != 0:
            raise _fail(response, f"RateLimit does not report {policy!r} with r=0")
    return problem
