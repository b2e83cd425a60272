"""`InProcessQueue`: the job queue of embedded mode, in the service's own event loop.

It honours the same options as the real engine (attempts, exponential backoff, a per-job
timeout, bounded retention, the dead-letter queue), so a claim recorded in embedded mode
settles end to end and the admin DLQ API behaves as it will in real mode. Jobs live in
memory: a restart forgets queued jobs, which is why the reconciler re-enqueues intents still
PENDING in the database.

Time comes from an injectable ``clock``: backoff delays are deadlines on it, and `drain`
runs every job that is due *now*, so tests move the clock instead of sleeping. `run` is
the loop the server uses.
"""

from __future__ import annotations

import builtins
import itertools
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskStatus

from reference_service.jobs.queue import (
    DLQ,
    RETRIED_FROM,
    ExhaustedHook,
    Handler,
    Job,
    JobNotFound,
    JobOptions,
    JobState,
)

__all__ = ["InProcessQueue"]

logger = logging.getLogger("reference_service.jobs")

LIVE = frozenset({JobState.WAITING, JobState.DELAYED, JobState.ACTIVE})


@dataclass(slots=True)
class _Queue:
    name: str
    jobs: OrderedDict[str, Job] = field(default_factory=OrderedDict)
    completed: deque[str] = field(default_factory=deque)
    failed: deque[str] = field(default_factory=deque)
    handler: Handler | None = None
    on_exhausted: ExhaustedHook | None = None
    concurrency: int = 1
    active: int = 0
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


class InProcessQueue:
    """Queues in a dict, jobs run as tasks of the service's event loop."""

    def __init__(self, *, options: JobOptions | None = None, clock: Any = time.time) -> None:
        self.options = options or JobOptions()
        self._clock = clock
        self._queues: dict[str, _Queue] = {}
        self._wakeup = anyio.Event()
        self._running = False
        self.closed = False

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue(name)
        return queue

    def process(
        self,
        queue: str,
        handler: Handler,
        *,
        concurrency: int = 1,
        on_exhausted: ExhaustedHook | None = None,
    ) -> None:
        """Run ``handler`` for the jobs of ``queue``; ``on_exhausted`` after a last failure."""
        q = self._queue(queue)
        q.handler, q.concurrency, q.on_exhausted = handler, concurrency, on_exhausted

    # -- the JobQueue interface -------------------------------------------------------------

    async def enqueue(
        self,
        queue: str,
        name: str,
        data: Mapping[str, Any],
        *,
        job_id: str | None = None,
        options: JobOptions | None = None,
    ) -> Job:
        q = self._queue(queue)
        if job_id is not None:
            existing = q.jobs.get(job_id)
            if existing is not None and existing.state in LIVE:
                return existing
            if existing is not None:
                self._forget(q, job_id)
        now = self._clock()
        job = Job(
            id=job_id or str(next(q.ids)),
            queue=queue,
            name=name,
            data=dict(data),
            options=options or self.options,
            created_at=now,
            run_at=now,
        )
        q.jobs[job.id] = job
        self._wake()
        return job

    async def get(self, queue: str, job_id: str) -> Job | None:
        return self._queue(queue).jobs.get(job_id)

    async def list(
        self, queue: str, states: Sequence[JobState], *, offset: int = 0, limit: int = 50
    ) -> list[Job]:
        wanted = set(states)
        matching = (
            job for job in reversed(self._queue(queue).jobs.values()) if job.state in wanted
        )
        return list(itertools.islice(matching, offset, offset + limit))

    async def retry(self, dlq_job_id: str) -> Job:
        dead = self._queue(DLQ).jobs.get(dlq_job_id)
        if dead is None:
            raise JobNotFound(dlq_job_id)
        data = {**dead.data["data"], RETRIED_FROM: dlq_job_id}
        job = await self.enqueue(dead.data["original_queue"], dead.name, data)
        self._forget(self._queue(DLQ), dlq_job_id)
        return job

    async def remove(self, queue: str, job_id: str) -> bool:
        q = self._queue(queue)
        job = q.jobs.get(job_id)
        if job is None or job.state is JobState.ACTIVE:
            return False
        self._forget(q, job_id)
        return True

    async def counts(self, queue: str) -> dict[JobState, int]:
        counts = dict.fromkeys(JobState, 0)
        for job in self._queue(queue).jobs.values():
            counts[job.state] += 1
        return counts

    async def ping(self) -> None:
        if self.closed:
            raise RuntimeError("the in-process queue has stopped")

    # -- running jobs -----------------------------------------------------------------------

    def _due(self) -> builtins.list[Job]:
        """Jobs to start now, at most each queue's concurrency, oldest first."""
        now = self._clock()
        picked: builtins.list[Job] = []
        for q in self._queues.values():
            if q.handler is None:
                continue
            for job in q.jobs.values():
                if q.active >= q.concurrency:
                    break
                if job.state in (JobState.WAITING, JobState.DELAYED) and job.run_at <= now:
                    job.state = JobState.ACTIVE
                    q.active += 1
                    picked.append(job)
        return picked

    def next_due_in(self) -> float:
        """Seconds until the next delayed job is due (infinity when none)."""
        now = self._clock()
        waits = [
            job.run_at - now
            for q in self._queues.values()
            if q.handler is not None
            for job in q.jobs.values()
            if job.state in (JobState.WAITING, JobState.DELAYED)
        ]
        return max(0.0, min(waits)) if waits else math.inf

    async def drain(self) -> int:
        """Run every job due now, and those they enqueue, until none is due; return the count.

        The deterministic way to drive the queue: a test records a claim, drains, moves the
        clock past a backoff, drains again.
        """
        ran = 0
        while batch := self._due():
            async with anyio.create_task_group() as tg:
                for job in batch:
                    tg.start_soon(self._run, job)
            ran += len(batch)
        return ran

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run jobs as they come due, until cancelled (the server's lifespan does)."""
        self._running = True
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                while True:
                    self._wakeup = anyio.Event()
                    for job in self._due():
                        tg.start_soon(self._run, job)
                    with anyio.move_on_after(min(self.next_due_in(), 60.0)):
                        await self._wakeup.wait()
        finally:
            self._running = False
            self.closed = True

    def _wake(self) -> None:
        self._wakeup.set()

    async def _run(self, job: Job) -> None:
        q = self._queue(job.queue)
        assert q.handler is not None
        job.attempts_made += 1
        try:
            with anyio.fail_after(job.options.timeout_seconds):
                job.result = await q.handler(job)
        except Exception as exc:
            reason = (
                f"timed out after {job.options.timeout_seconds:g} s"
                if isinstance(exc, TimeoutError)
                else f"{type(exc).__name__}: {exc}"
            )
            await self._failed(q, job, reason)
        else:
            job.state, job.finished_at = JobState.COMPLETED, self._clock()
            self._retain(q, q.completed, job, job.options.remove_on_complete)
        finally:
            q.active -= 1
            self._wake()

    async def _failed(self, q: _Queue, job: Job, reason: str) -> None:
        job.failed_reason = reason
        job.history.append(reason)
        if job.attempts_made < job.options.attempts:
            job.state = JobState.DELAYED
            job.run_at = self._clock() + job.options.backoff(job.attempts_made)
            logger.info(
                "job %s/%s failed (%s); attempt %d", q.name, job.id, reason, job.attempts_made
            )
            return
        job.state, job.finished_at = JobState.FAILED, self._clock()
        self._retain(q, q.failed, job, job.options.remove_on_fail)
        logger.warning("job %s/%s exhausted its attempts: %s", q.name, job.id, reason)
        if q.on_exhausted is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await q.on_exhausted(job)
                except Exception:
                    logger.exception("the exhausted-job hook of %s failed", q.name)
        await self.enqueue(
            DLQ,
            job.name,
            {
                "original_queue": q.name,
                "original_job_id": job.id,
                "reason": reason,
                "attempts_made": job.attempts_made,
                "data": job.data,
            },
        )

    def _retain(self, q: _Queue, kept: deque[str], job: Job, limit: int) -> None:
        kept.append(job.id)
        while len(kept) > limit:
            old = kept.popleft()
            stale = q.jobs.get(old)
            if stale is not None and stale.state in (JobState.COMPLETED, JobState.FAILED):
                del q.jobs[old]

    def _forget(self, q: _Queue, job_id: str) -> None:
        q.jobs.pop(job_id, None)
        for kept in (q.completed, q.failed):
            if job_id in kept:
                kept.remove(job_id)
