"""`bastion.testing`: the clock, the faulty store and the response assertions users test with."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest

from bastion.exceptions import StoreError, StoreUnavailable
from bastion.stores import IdempotencyStore, MemoryStore, RateLimitHit, RateLimitStore
from bastion.testing import (
    FakeClock,
    FaultyStore,
    assert_conflict,
    assert_mismatch,
    assert_rate_limited,
    assert_replayed,
)

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "testing_app.py"
HIT = RateLimitHit(key="k", algorithm="fixed_window", limit=1, window_ms=60_000)


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("testing_app_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _response(
    status: int,
    body: Any = b"",
    headers: dict[str, str] | None = None,
    *,
    problem: bool = False,
) -> httpx.Response:
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    fields = dict(headers or {})
    if problem:
        fields["content-type"] = "application/problem+json"
    return httpx.Response(status, content=body, headers=fields)


# -- FakeClock --------------------------------------------------------------------------------


async def test_fake_clock_drives_store_expiry() -> None:
    """A lease taken on a FakeClock runs out when the clock is advanced past it, not before."""
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    assert (await store.claim("k", "f", "t1", lease_ms=1000)).acquired
    clock.advance(0.999)
    assert not (await store.claim("k", "f", "t2", lease_ms=1000)).acquired
    clock.advance(0.002)
    assert (await store.claim("k", "f", "t3", lease_ms=1000)).acquired


def test_fake_clock_never_runs_backwards() -> None:
    """advance refuses a negative step; the clock reads what it was set to."""
    clock = FakeClock(100.0)
    clock.advance(2.5)
    assert clock() == 102.5
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)


# -- FaultyStore ------------------------------------------------------------------------------


async def test_faulty_store_passes_through_until_told_otherwise() -> None:
    """Without faults every primitive reaches the inner store, and calls are counted."""
    store = FaultyStore(MemoryStore())
    assert isinstance(store, IdempotencyStore)
    assert isinstance(store, RateLimitStore)
    assert store.backend == "memory"
    assert (await store.claim("k", "f", "t", lease_ms=1000)).acquired
    assert await store.complete("k", "t", b"r", ttl_ms=1000)
    assert [d.allowed for d in await store.hit([HIT])] == [True]
    await store.ping()
    assert store.calls == {"claim": 1, "complete": 1, "hit": 1, "ping": 1}


async def test_fail_raises_the_chosen_error_a_given_number_of_times() -> None:
    """fail() raises StoreUnavailable by default, or the given error, for ``times`` calls."""
    store = FaultyStore(MemoryStore())
    store.fail("claim")
    with pytest.raises(StoreUnavailable):
        await store.claim("k", "f", "t", lease_ms=1000)
    store.fail("hit", StoreError("boom"), times=1)
    with pytest.raises(StoreError, match="boom"):
        await store.hit([HIT])
    assert (await store.hit([HIT]))[0].allowed
    store.fail("ping", AttributeError)
    with pytest.raises(AttributeError):
        await store.ping()


async def test_fail_after_loses_the_answer_of_a_write_that_happened() -> None:
    """With after=True the inner call runs, then the error is raised: the record is stored."""
    inner = MemoryStore()
    store = FaultyStore(inner)
    assert (await store.claim("k", "f", "t", lease_ms=1000)).acquired
    store.fail("complete", after=True)
    with pytest.raises(StoreUnavailable):
        await store.complete("k", "t", b"stored", ttl_ms=1000)
    assert (await inner.claim("k", "f", "other", lease_ms=1000)).response == b"stored"


async def test_hang_holds_calls_until_released() -> None:
    """A hung primitive waits (entered is set) until release, then answers from the inner store."""
    store = FaultyStore(MemoryStore())
    hang = store.hang("hit")
    answers: list[bool] = []

    async def call() -> None:
        answers.append((await store.hit([HIT]))[0].allowed)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await hang.entered.wait()
        assert answers == []
        hang.release()
    assert answers == [True]


async def test_hang_until_an_event_and_heal() -> None:
    """hang(until=event) releases on the caller's event; heal() clears faults and hangs."""
    store = FaultyStore(MemoryStore())
    event = anyio.Event()
    store.hang("claim", until=event)
    event.set()
    assert (await store.claim("k", "f", "t", lease_ms=1000)).acquired
    store.fail("release")
    hang = store.hang("renew")
    store.heal()
    assert hang.released.is_set()
    assert await store.release("k", "t")


def test_unknown_primitive_is_refused() -> None:
    """A typo in a primitive name fails loudly rather than injecting nothing."""
    store = FaultyStore(MemoryStore())
    with pytest.raises(ValueError, match="unknown store primitive"):
        store.fail("clam")
    with pytest.raises(ValueError, match="times"):
        store.fail("claim", times=0)


class _StoreWithExtras(MemoryStore):
    engine = "the inner store's engine"


def test_faulty_store_forwards_the_inner_stores_extras() -> None:
    """Attributes the wrapper lacks come from the inner store; others still raise."""
    store = FaultyStore(_StoreWithExtras())
    assert store.engine == "the inner store's engine"
    with pytest.raises(AttributeError):
        _ = store.no_such_attribute


# -- assertions -------------------------------------------------------------------------------


REPLAY = {"content-type": "application/json", "idempotent-replayed": "true"}


@pytest.mark.parametrize(
    ("replay", "message"),
    [
        (_response(201, b"{}", {"content-type": "application/json"}), "expected a replay"),
        (_response(200, b"{}", REPLAY), "status differs"),
        (_response(201, b"{ }", REPLAY), "body differs"),
        (_response(201, b"{}", {**REPLAY, "content-type": "text/plain"}), "content type"),
        (_response(201, b"{}", {**REPLAY, "set-cookie": "s=1"}), "Set-Cookie"),
    ],
)
def test_assert_replayed_names_what_differs(replay: httpx.Response, message: str) -> None:
    """assert_replayed fails on a response that is not a faithful replay, saying why."""
    first = _response(201, b"{}", {"content-type": "application/json", "set-cookie": "s=1"})
    with pytest.raises(AssertionError, match=message):
        assert_replayed(replay, first)


def _problem(status: int, slug: str, **extra: Any) -> dict[str, Any]:
    return {"type": f"urn:bastion:problem:{slug}", "status": status, **extra}


@pytest.mark.parametrize(
    ("check", "response", "message"),
    [
        (assert_conflict, _response(422, _problem(422, "x"), problem=True), "status 409"),
        (
            assert_conflict,
            _response(409, _problem(409, "idempotency-key-in-flight")),
            "problem\\+json",
        ),
        (
            assert_conflict,
            _response(409, _problem(409, "idempotency-key-in-flight"), problem=True),
            "Retry-After",
        ),
        (assert_mismatch, _response(422, _problem(422, "other"), problem=True), "problem type"),
        (assert_mismatch, _response(422, b"not json", problem=True), "not JSON"),
        (assert_rate_limited, _response(429, _problem(429, "x"), problem=True), "quota-exceeded"),
    ],
)
def test_problem_assertions_fail_on_the_wrong_answer(
    check: Callable[[httpx.Response], Any], response: httpx.Response, message: str
) -> None:
    """Each problem assertion rejects a response with the wrong status, type or fields."""
    with pytest.raises(AssertionError, match=message):
        check(response)


async def test_assertions_accept_bastions_own_answers() -> None:
    """Driven through the real middleware, each assertion holds for the answer it names."""
    example = _example()
    for check in example.CHECKS:
        await check()


async def test_assert_rate_limited_checks_the_policy_and_its_fields() -> None:
    """assert_rate_limited finds the named policy in the body and the RateLimit fields."""
    example = _example()
    clock = FakeClock()
    transport = httpx.ASGITransport(example.create_app(MemoryStore(clock=clock)))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for _ in range(3):
            await client.post("/orders", json={})
        denied = await client.post("/orders", json={})
    problem = assert_rate_limited(denied, policy="orders")
    assert problem["violated-policies"] == ["orders"]
    with pytest.raises(AssertionError, match="not among the violated"):
        assert_rate_limited(denied, policy="daily")
    forged = httpx.Response(
        429,
        content=denied.content,
        headers={**denied.headers, "retry-after": "0"},
    )
    with pytest.raises(AssertionError, match="earlier than a t"):
        assert_rate_limited(forged)


def test_fake_clock_steps_back_only_when_asked() -> None:
    """``advance`` refuses a negative step; ``step_back`` jumps back like an NTP correction."""
    clock = FakeClock(100.0)
    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance(-1)
    clock.step_back(30)
    assert clock() == 70.0
    with pytest.raises(ValueError, match="positive"):
        clock.step_back(-1)
