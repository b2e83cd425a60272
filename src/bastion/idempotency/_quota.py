"""How a rate limiter placed outside `IdempotencyMiddleware` charges a keyed request only once
it is known what the request is: a fresh one, or one the idempotency layer answers itself.

A limiter decides before the handler runs; outside the idempotency layer it would also decide
before anyone knows whether a keyed request is a retry, and so charge (or refuse) replays and
in-flight 409s like new work. Instead, a limiter that finds an idempotency layer inside it
leaves a `QuotaGate` in the scope of each request that layer will look at, and the layer
settles it once its claim has decided: `QuotaGate.fresh` before the handler runs (the normal
tiers are charged then, all or nothing, and may refuse), `QuotaGate.answered` before it sends
a replay, a 409, a 422 or another answer of its own (only a replay tier, if any, is charged).
The limiter keeps its exactness: a fresh request is still charged before its handler runs.

When both layers share a store that can (`bastion.stores.ClaimHitStore`), the layer asks the
gate for its hits first (`QuotaGate.joint_hits`) and makes the claim and the charge one store
call, one round trip; `QuotaGate.charged` then answers from the decisions as `fresh` would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Protocol

from bastion.stores._protocols import RateLimitHit
from bastion.typing import Scope

__all__ = ["QUOTA_GATE_KEY", "QuotaGate", "settle"]

QUOTA_GATE_KEY = "bastion.quota_gate"


class QuotaGate(Protocol):
    """A keyed request's rate-limit charge, left for the idempotency layer to settle once."""

    async def fresh(self) -> bool:
        """The handler is about to run: charge the normal tiers. False when the limiter
        refused the request and has answered it (429 or 503): it must not run."""
        ...

    def joint_hits(self) -> Sequence[RateLimitHit] | None:
        """The hits `fresh` would charge, when the limiter shares the idempotency layer's
        store and that store charges them with the claim (`ClaimHitStore`); None when the
        claim is to be made alone, and the gate settled as usual."""
        ...

    async def charged(self, decisions: object) -> bool:
        """The claim was taken and the hits of `joint_hits` charged with it: answer as `fresh`
        would, from the store's ``decisions``. False when the limiter refused the request and
        has answered it; the claim is then to be released."""
        ...

    async def answered(self) -> bool:
        """The idempotency layer answers itself (replay, 409, 422, 400, 413, 503): charge only
        the replay tier, if there is one. False when that tier refused and the limiter has
        answered the request with a 429."""
        ...


def settle(scope: Scope, *, fresh: bool) -> Awaitable[bool]:
    """Settle the gate a limiter left in ``scope``, if any (once: it is taken out of the
    scope); True when the request goes on, and with no gate. The gate's own call is handed
    back to await, not wrapped in another coroutine."""
    gate: QuotaGate | None = scope.pop(QUOTA_GATE_KEY, None)
    if gate is None:
        return _go_on()
    return gate.fresh() if fresh else gate.answered()


async def _go_on() -> bool:
    return True
