"""The limiter outside the idempotency layer, both on one store that claims with hits: a fresh
keyed request's claim and charge are one store call, with the answers of the two calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from bastion import (
    IdempotencyMiddleware,
    IdempotencySettings,
    RateLimitMiddleware,
    RateLimitSettings,
    Tier,
)
from bastion.stores import MemoryStore, RedisStore
from bastion.testing import FaultyStore
from tests.conftest import FakeClock
from tests.ratelimit.conftest import client
from tests.ratelimit.test_replays import Handler, fresh, post, stack
from tests.stores.redis_support import fakeredis_store

pytestmark = pytest.mark.anyio


class Recording(MemoryStore):
    """A memory store that records which primitives the middleware call, and may answer
    ``claim_and_hit`` with ``joint_answer`` instead."""

    def __init__(self, clock: FakeClock, *, joint: bool = True) -> None:
        super().__init__(clock=clock)
        self.calls: list[str] = []
        self.joint = joint
        self.joint_answer: Any = None
        self.found_taken = anyio.Event()

    @property
    def claims_with_hits(self) -> bool:  # type: ignore[override]
        return self.joint

    async def claim(self, key: str, fingerprint: str, token: str, *, lease_ms: int) -> Any:
        self.calls.append("claim")
        claim = await super().claim(key, fingerprint, token, lease_ms=lease_ms)
        if not claim.acquired:
            self.found_taken.set()
        return claim

    async def hit(self, hits: Sequence[Any]) -> Any:
        self.calls.append("hit")
        return await super().hit(hits)

    async def release(self, key: str, token: str) -> bool:
        self.calls.append("release")
        return await super().release(key, token)

    async def complete(self, key: str, token: str, response: bytes, *, ttl_ms: int) -> bool:
        self.calls.append("complete")
        return await super().complete(key, token, response, ttl_ms=ttl_ms)

    async def claim_and_hit(
        self, key: str, fingerprint: str, token: str, hits: Sequence[Any], *, lease_ms: int
    ) -> Any:
        self.calls.append("claim_and_hit")
        answer = await MemoryStore.claim(self, key, fingerprint, token, lease_ms=lease_ms)
        if answer.acquired:
            answer = (answer, await MemoryStore.hit(self, hits))
        else:
            answer = (answer, [])
            self.found_taken.set()
        return answer if self.joint_answer is None else self.joint_answer(answer)


@pytest.mark.parametrize("joint", [True, False])
async def test_one_store_call_claims_and_charges_a_fresh_request(
    joint: bool, clock: FakeClock
) -> None:
    """Fresh, replayed, refused: the same answers with or without the joint call, which
    replaces claim + hit on every fresh request (and only there)."""
    store = Recording(clock, joint=joint)
    handler = Handler()
    app = stack("limit-outside", handler, store, fresh(2))
    async with client(app) as http:
        first = await post(http, "a")
        replay = await post(http, "a")
        second = await post(http, "b")
        refused = await post(http, "c")
        clock.advance(61)
        retried = await post(http, "c")
    assert [r.status_code for r in (first, replay, second, refused, retried)] == [201] * 3 + [
        429,
        201,
    ]
    assert first.headers["ratelimit"].startswith('"writes";r=1')
    assert refused.json()["violated-policies"] == ["writes"]
    assert handler.runs == 3
    claim = ["claim_and_hit"] if joint else ["claim", "hit"]
    assert store.calls == [
        *claim,
        "complete",  # a
        "claim_and_hit" if joint else "claim",  # the replay: charged to nothing
        *claim,
        "complete",  # b
        *claim,
        "release",  # c refused, its key given back
        *claim,
        "complete",  # c retried
    ]


async def test_other_stores_and_a_limiter_on_its_own_store_claim_alone(clock: FakeClock) -> None:
    """The joint call needs one store under both layers: with two, each is asked as before."""
    records, buckets = Recording(clock), Recording(clock)
    inner = IdempotencyMiddleware(Handler(), store=records)
    app = RateLimitMiddleware(inner, store=buckets, settings=RateLimitSettings(tiers=(fresh(2),)))
    async with client(app) as http:
        assert (await post(http, "a")).status_code == 201
    assert records.calls == ["claim", "complete"]
    assert buckets.calls == ["hit"]


async def test_a_malformed_joint_answer_is_a_store_failure(clock: FakeClock) -> None:
    """A claim_and_hit answer that is not (Claim, decisions) gets the idempotency store's
    failure policy (503 by default, the handler not run), never a 500."""
    store = Recording(clock)
    store.joint_answer = lambda answer: answer[0]
    handler = Handler()
    app = stack("limit-outside", handler, store, fresh(2))
    async with client(app) as http:
        answer = await post(http, "a")
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert handler.runs == 0


@pytest.mark.parametrize("fail_open", [True, False])
async def test_malformed_decisions_get_the_limiters_failure_policy(
    fail_open: bool, clock: FakeClock
) -> None:
    """The claim was taken but the decisions are unreadable: a tier failing open runs the
    request without fields; one failing closed answers 503 and frees the key for a retry."""
    store = Recording(clock)
    store.joint_answer = lambda answer: (answer[0], ["not a decision"])
    handler = Handler()
    tier = Tier(name="writes", limit=2, window=60, fail_open=fail_open)
    app = stack("limit-outside", handler, store, tier)
    async with client(app) as http:
        answer = await post(http, "a")
        store.joint_answer = None
        retried = await post(http, "a")
    if fail_open:
        assert answer.status_code == 201
        assert "ratelimit" not in answer.headers
        assert retried.headers["idempotent-replayed"] == "true"
        assert handler.runs == 1
    else:
        assert answer.status_code == 503
        assert retried.status_code == 201
        assert "idempotent-replayed" not in retried.headers
        assert handler.runs == 1


async def test_a_duplicate_that_waits_and_then_runs_is_charged_once(clock: FakeClock) -> None:
    """With ``wait``, a duplicate whose first request failed (500, key released) takes the key
    after waiting: its joint call charged nothing, so it is charged then, once."""
    store = Recording(clock)
    started, failing = anyio.Event(), anyio.Event()
    runs: list[int] = []

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        runs.append(len(runs))
        if len(runs) == 1:
            started.set()
            await failing.wait()
            await send({"type": "http.response.start", "status": 500, "headers": []})
        else:
            await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    inner = IdempotencyMiddleware(handler, store=store, settings=IdempotencySettings(wait=True))
    app = RateLimitMiddleware(inner, store=store, settings=RateLimitSettings(tiers=(fresh(5),)))
    answers: list[Any] = []

    async def send(http: Any) -> None:
        answers.append(await post(http, "k"))

    async with client(app) as http, anyio.create_task_group() as tg:
        tg.start_soon(send, http)
        await started.wait()
        store.calls.clear()
        tg.start_soon(send, http)  # the duplicate: its joint call finds the key in flight
        await store.found_taken.wait()
        failing.set()
    assert sorted(r.status_code for r in answers) == [201, 500]
    retried = next(r for r in answers if r.status_code == 201)
    assert retried.headers["ratelimit"].startswith('"writes";r=3')  # two charges in all
    assert store.calls.count("hit") == 1


def test_a_cluster_store_is_charged_apart() -> None:
    """On a Redis Cluster the record and the buckets live in different slots: the limiter
    does not ask for the joint call."""
    from redis.asyncio.cluster import RedisCluster

    store = RedisStore(RedisCluster(host="127.0.0.1", port=1))
    inner = IdempotencyMiddleware(Handler(), store=store)
    limiter = RateLimitMiddleware(inner, store=store, settings=RateLimitSettings(tiers=(fresh(1),)))
    assert limiter._joint is False
    assert (
        RateLimitMiddleware(
            IdempotencyMiddleware(Handler(), store=MemoryStore()),
            store=MemoryStore(),
            settings=RateLimitSettings(tiers=(fresh(1),)),
        )._joint
        is False
    )


async def test_a_faulty_store_keeps_the_claim_and_the_charge_apart(clock: FakeClock) -> None:
    """`FaultyStore` over a store that joins them: a fault set on ``claim`` still acts."""
    async with fakeredis_store(clock) as inner:
        assert inner.claims_with_hits
        store = FaultyStore(inner)
        store.fail("claim")
        handler = Handler()
        async with client(stack("limit-outside", handler, store, fresh(2))) as http:
            answer = await post(http, "a")
    assert answer.status_code == 503
    assert store.calls["claim"] == 1
    assert handler.runs == 0
