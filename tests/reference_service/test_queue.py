"""The in-process queue: options as BullMQ's, retention, timeouts, dedup, the sweeper."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio
import pytest
from reference_service.db.models import Intent
from reference_service.jobs.memory import InProcessQueue
from reference_service.jobs.queue import DLQ, Job, JobOptions, JobState
from sqlalchemy import update

from tests.conftest import FakeClock
from tests.reference_service.conftest import WALLETS, Harness
from tests.reference_service.helpers import claim, register

pytestmark = pytest.mark.anyio


async def test_backoff_doubles_from_one_second() -> None:
    """The plan's options: waits of 1, 2, 4, 8 s between 5 attempts in all."""
    options = JobOptions()
    assert options.attempts == 5
    assert [options.backoff(n) for n in range(1, 5)] == [1, 2, 4, 8]


async def test_retention_keeps_the_last_finished_jobs(clock: FakeClock) -> None:
    """remove_on_complete / remove_on_fail bound what is kept, oldest dropped first."""
    queue = InProcessQueue(
        options=JobOptions(attempts=1, remove_on_complete=3, remove_on_fail=2), clock=clock
    )

    async def handler(job: Job) -> None:
        if job.data["fail"]:
            raise ValueError("boom")

    queue.process("q", handler, concurrency=4)
    for i in range(10):
        await queue.enqueue("q", "work", {"fail": i % 2 == 0})
    assert await queue.drain() == 10
    counts = await queue.counts("q")
    assert counts[JobState.COMPLETED] == 3
    assert counts[JobState.FAILED] == 2
    kept = await queue.list("q", [JobState.COMPLETED])
    assert [job.id for job in kept] == ["10", "8", "6"]
    assert (await queue.counts(DLQ))[JobState.WAITING] == 5


async def test_a_hung_job_times_out(clock: FakeClock) -> None:
    """The per-job timeout fails an attempt that never finishes (stalled checks would not)."""
    queue = InProcessQueue(options=JobOptions(attempts=1, timeout_seconds=0.01), clock=clock)

    async def hang(job: Job) -> None:
        await anyio.sleep_forever()

    queue.process("q", hang)
    job = await queue.enqueue("q", "hang", {})
    await queue.drain()
    assert job.state is JobState.FAILED
    assert job.failed_reason == "timed out after 0.01 s"


async def test_a_job_id_is_enqueued_once_while_live(clock: FakeClock) -> None:
    """The same job id returns the queued job; remove and get behave."""
    queue = InProcessQueue(clock=clock)
    first = await queue.enqueue("q", "a", {}, job_id="x")
    assert await queue.enqueue("q", "a", {}, job_id="x") is first
    assert await queue.get("q", "x") is first
    assert await queue.remove("q", "x")
    assert await queue.get("q", "x") is None
    assert not await queue.remove("q", "x")


async def test_run_processes_jobs_as_they_come(clock: FakeClock) -> None:
    """The server's loop runs a job enqueued after it started."""
    queue = InProcessQueue(clock=clock)
    done = anyio.Event()

    async def handler(job: Job) -> Any:
        done.set()

    queue.process("q", handler)
    async with anyio.create_task_group() as tg:
        await tg.start(queue.run)
        await queue.enqueue("q", "a", {})
        await done.wait()
        tg.cancel_scope.cancel()
    assert queue.closed


async def test_the_sweeper_dead_letters_intents_stuck_in_processing(harness: Harness) -> None:
    """An intent PROCESSING for over 10 minutes (its worker died) is FAILED and in the DLQ."""
    await register(harness.client, WALLETS[0])
    intent = await claim(harness.client, WALLETS[0], "1")
    stale = harness.service.now() - timedelta(minutes=11)
    async with harness.service.db.write() as repo:
        await repo.session.execute(
            update(Intent)
            .where(Intent.id == intent["id"])
            .values(status="PROCESSING", locked_at=stale)
        )
    result = await harness.service.reconcile_job(await harness.queue.enqueue("x", "r", {}))
    assert result["swept"] == 1
    failed = (await harness.client.get(f"/api/intents/{intent['id']}")).json()
    assert failed["status"] == "FAILED"
    [dead] = await harness.queue.list(DLQ, [JobState.WAITING])
    assert dead.data["original_queue"] == "intent-queue"
    assert dead.data["reason"] == "stuck in PROCESSING"


async def test_the_reconciler_requeues_intents_left_pending(harness: Harness) -> None:
    """An intent whose job was lost (a restart) gets a new one once it is 30 s old."""
    await register(harness.client, WALLETS[0])
    intent = await claim(harness.client, WALLETS[0], "1")
    await harness.queue.remove("intent-queue", f"intent:{intent['id']}")
    harness.clock.advance(31)
    await harness.queue.enqueue("reconciler-queue", "reconcile", {})
    await harness.drain()
    settled = (await harness.client.get(f"/api/intents/{intent['id']}")).json()
    assert settled["status"] == "SETTLED"
