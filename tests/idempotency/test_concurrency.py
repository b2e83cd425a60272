"""Duplicates in flight, waiting, lease renewal and fencing, with real concurrency."""

from __future__ import annotations

import time
from functools import partial

import anyio
import httpx
import pytest

from bastion import IdempotencySettings
from bastion.stores import MemoryStore
from tests.conftest import FakeClock
from tests.idempotency.apps import Backend
from tests.idempotency.conftest import Factory

pytestmark = pytest.mark.anyio

KEY = {"Idempotency-Key": "concurrent-1"}


async def test_duplicate_in_flight_is_409(client: httpx.AsyncClient, backend: Backend) -> None:
    """A duplicate arriving while the first runs is refused with Retry-After, not run."""
    backend.gate = anyio.Event()
    results: dict[str, httpx.Response] = {}

    async def first() -> None:
        results["first"] = await client.post("/charge", json={"amount": 1}, headers=KEY)

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await backend.entered.wait()
        duplicate = await client.post("/charge", json={"amount": 1}, headers=KEY)
        backend.gate.set()
    assert duplicate.status_code == 409
    assert duplicate.headers["content-type"] == "application/problem+json"
    assert int(duplicate.headers["retry-after"]) >= 1
    assert results["first"].status_code == 201
    assert backend.calls["charge"] == 1


async def test_waiting_duplicate_gets_the_replay(make_client: Factory, backend: Backend) -> None:
    """With wait=True a duplicate waits for the first to finish and replays its answer."""
    client = make_client(IdempotencySettings(wait=True, wait_timeout_seconds=5))
    backend.gate = anyio.Event()
    results: dict[str, httpx.Response] = {}

    async def first() -> None:
        results["first"] = await client.post("/charge", json={"amount": 1}, headers=KEY)

    async def duplicate() -> None:
        results["duplicate"] = await client.post("/charge", json={"amount": 1}, headers=KEY)

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await backend.entered.wait()
        tg.start_soon(duplicate)
        await anyio.sleep(0.05)
        backend.gate.set()
    assert results["duplicate"].status_code == 201
    assert results["duplicate"].headers["idempotent-replayed"] == "true"
    assert results["duplicate"].content == results["first"].content
    assert backend.calls["charge"] == 1


async def test_waiting_duplicate_gives_up_with_409(make_client: Factory, backend: Backend) -> None:
    """A waiting duplicate answers 409 once its wait bound has passed."""
    client = make_client(IdempotencySettings(wait=True, wait_timeout_seconds=0.1))
    backend.gate = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(client.post, "/charge", headers=KEY))
        await backend.entered.wait()
        duplicate = await client.post("/charge", headers=KEY)
        backend.gate.set()
    assert duplicate.status_code == 409


async def test_hundred_concurrent_duplicates_run_once(
    client: httpx.AsyncClient, backend: Backend
) -> None:
    """Of 100 simultaneous requests with one key the handler runs exactly once; every other
    answer is 409 or the identical replay, and later retries all replay it."""
    backend.gate = anyio.Event()
    responses: list[httpx.Response] = []

    async def one() -> None:
        responses.append(await client.post("/charge", json={"amount": 7}, headers=KEY))

    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(one)
        await backend.entered.wait()
        await anyio.sleep(0.05)
        backend.gate.set()
    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(one)
    assert backend.calls["charge"] == 1
    assert len(responses) == 120
    originals = [
        r for r in responses if r.status_code == 201 and "idempotent-replayed" not in r.headers
    ]
    assert len(originals) == 1
    others = [r for r in responses if r is not originals[0]]
    conflicts = [r for r in others if r.status_code == 409]
    replays = [r for r in others if r.status_code != 409]
    assert len(conflicts) == 99
    assert len(replays) == 20
    for replay in replays:
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.content == originals[0].content


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_long_handler_renews_its_lease(make_client: Factory, backend: Backend) -> None:
    """A handler running past its lease keeps the key: the lease is renewed while it runs,
    by a timer on asyncio and by a task group on trio."""
    store = MemoryStore(clock=time.time)
    client = make_client(IdempotencySettings(lease_seconds=0.5), store=store)
    gate = backend.gate = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(client.post, "/charge", headers=KEY))
        await backend.entered.wait()
        await anyio.sleep(1.5)  # three lease lengths
        backend.gate = None  # were the lease lost, the duplicate would run, not hang
        duplicate = await client.post("/charge", headers=KEY)
        gate.set()
    assert duplicate.status_code == 409
    assert backend.calls["charge"] == 1


async def test_fencing_through_the_middleware(
    make_client: Factory, backend: Backend, clock: FakeClock, store: MemoryStore
) -> None:
    """A hung first request loses its lease; the takeover's response is what gets replayed."""
    client = make_client()
    first_gate = anyio.Event()
    backend.gate = first_gate
    results: dict[str, httpx.Response] = {}

    async def stale() -> None:
        results["stale"] = await client.post("/charge", json={"amount": 1}, headers=KEY)

    async with anyio.create_task_group() as tg:
        tg.start_soon(stale)
        await backend.entered.wait()
        clock.advance(31)
        backend.gate = None
        results["new"] = await client.post("/charge", json={"amount": 1}, headers=KEY)
        first_gate.set()
    # the takeover ran first (the stale one was held), so it holds charge number 1
    assert results["new"].json()["charge"] == 1
    assert results["stale"].json()["charge"] == 2
    replay = await client.post("/charge", json={"amount": 1}, headers=KEY)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == results["new"].content


async def test_waiting_mode_refuses_reused_key_at_once(
    make_client: Factory, backend: Backend
) -> None:
    """With wait=True, another body under an in-flight key gets 422 without waiting."""
    client = make_client(IdempotencySettings(wait=True, wait_timeout_seconds=30))
    backend.gate = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(client.post, "/charge", json={"amount": 1}, headers=KEY))
        await backend.entered.wait()
        with anyio.fail_after(5):
            reused = await client.post("/charge", json={"amount": 2}, headers=KEY)
        backend.gate.set()
    assert reused.status_code == 422
