"""`BullQueue` and `QueueWorkers`: the real mode's jobs on BullMQ for Python.

`BullQueue` implements the service's `JobQueue` over BullMQ queues in Redis, translating
BullMQ's jobs into the service's own `Job`, so nothing above this module sees a BullMQ type.
`QueueWorkers` runs BullMQ workers for the intent, payout and reconciler queues in a
worker process (``bastion-service worker``), with what BullMQ leaves to its user:

- a per-job timeout, because BullMQ's stalled check only finds workers that died, never a
  job that hangs in a live one;
- the dead-letter queue: the try that exhausts a job's attempts copies it there, with its
  reason and original queue, before BullMQ marks it failed;
- the sweeper and the reconciler as BullMQ job schedulers (repeatable jobs), so each runs
  once per period however many worker processes there are.

BullMQ counts ``attempts`` as tries in all; its exponential backoff waits
``delay * 2 ** (tries made - 1)``, the same waits as `JobOptions.backoff`.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import bullmq  # type: ignore[import-untyped]
from redis.asyncio import Redis

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

__all__ = ["BullQueue", "QueueWorkers"]

logger = logging.getLogger("reference_service.jobs")

_STATES: dict[JobState, tuple[str, ...]] = {
    JobState.WAITING: ("waiting", "prioritized", "paused"),
    JobState.DELAYED: ("delayed",),
    JobState.ACTIVE: ("active",),
    JobState.COMPLETED: ("completed",),
    JobState.FAILED: ("failed",),
}
_STATE_OF = {raw: state for state, raws in _STATES.items() for raw in raws}
_LIVE = {"waiting", "prioritized", "paused", "delayed", "active", "waiting-children"}
ENQUEUE_TIMEOUT = 5.0
"""BullMQ's client retries for a long while when Redis is away; a request should not."""


class JobFailed(Exception):
    """A failed try; its message is the reason BullMQ records."""


def bull_options(options: JobOptions, job_id: str | None = None) -> dict[str, Any]:
    """The plan's ``defaultJobOptions`` in BullMQ's spelling."""
    opts: dict[str, Any] = {
        "attempts": options.attempts,
        "backoff": {"type": "exponential", "delay": round(options.backoff_seconds * 1000)},
        "removeOnComplete": options.remove_on_complete,
        "removeOnFail": options.remove_on_fail,
    }
    if job_id is not None:
        opts["jobId"] = job_id
    return opts


def to_job(queue: str, raw: Any, state: JobState, options: JobOptions) -> Job:
    """The service's view of a BullMQ job."""
    attempts = int(raw.opts.get("attempts") or options.attempts)
    return Job(
        id=str(raw.id),
        queue=queue,
        name=str(raw.name),
        data=dict(raw.data or {}),
        options=JobOptions(
            attempts=attempts,
            backoff_seconds=options.backoff_seconds,
            timeout_seconds=options.timeout_seconds,
            remove_on_complete=options.remove_on_complete,
            remove_on_fail=options.remove_on_fail,
        ),
        state=state,
        attempts_made=int(raw.attemptsMade or 0),
        created_at=(raw.timestamp or 0) / 1000,
        run_at=(raw.timestamp or 0) / 1000,
        finished_at=raw.finishedOn / 1000 if raw.finishedOn else None,
        failed_reason=raw.failedReason or None,
        result=raw.returnvalue,
        redelivered=int(raw.attemptsStarted or 0) > int(raw.attemptsMade or 0) + 1,
    )


class BullQueue:
    """The `JobQueue` interface over BullMQ; one `bullmq.Queue` per queue name."""

    def __init__(
        self, redis_url: str, *, prefix: str = "bull", options: JobOptions | None = None
    ) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.options = options or JobOptions()
        self._queues: dict[str, bullmq.Queue] = {}
        self._redis: Redis | None = None

    def queue(self, name: str) -> bullmq.Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = bullmq.Queue(
                name, {"connection": self.redis_url, "prefix": self.prefix}
            )
        return queue

    async def _state(self, queue: str, job_id: str) -> str:
        return str(await self.queue(queue).getJobState(job_id))

    async def enqueue(
        self,
        queue: str,
        name: str,
        data: Mapping[str, Any],
        *,
        job_id: str | None = None,
        options: JobOptions | None = None,
    ) -> Job:
        options = options or self.options
        q = self.queue(queue)
        with anyio.fail_after(ENQUEUE_TIMEOUT):
            if job_id is not None:
                existing = await q.getJob(job_id)
                if existing is not None:
                    state = await self._state(queue, job_id)
                    if state in _LIVE:
                        live = _STATE_OF.get(state, JobState.WAITING)
                        return to_job(queue, existing, live, options)
                    await q.remove(job_id)
            raw = await q.add(name, dict(data), bull_options(options, job_id))
        return to_job(queue, raw, JobState.WAITING, options)

    async def get(self, queue: str, job_id: str) -> Job | None:
        raw = await self.queue(queue).getJob(job_id)
        if raw is None:
            return None
        state = _STATE_OF.get(await self._state(queue, job_id), JobState.WAITING)
        return to_job(queue, raw, state, self.options)

    async def list(
        self, queue: str, states: Sequence[JobState], *, offset: int = 0, limit: int = 50
    ) -> builtins.list[Job]:
        q = self.queue(queue)
        found: builtins.list[Job] = []
        for state in states:
            for raw in await q.getJobs(list(_STATES[state]), 0, offset + limit - 1, asc=False):
                if raw is not None:
                    found.append(to_job(queue, raw, state, self.options))
        found.sort(key=lambda job: (job.created_at, job.id), reverse=True)
        return found[offset : offset + limit]

    async def retry(self, dlq_job_id: str) -> Job:
        dead = await self.queue(DLQ).getJob(dlq_job_id)
        if dead is None:
            raise JobNotFound(dlq_job_id)
        data = dict(dead.data or {})
        # the id makes two operators' concurrent retries of one dead job enqueue it once
        job = await self.enqueue(
            str(data["original_queue"]),
            str(dead.name),
            {**dict(data.get("data") or {}), RETRIED_FROM: dlq_job_id},
            job_id=f"retry-{dlq_job_id}",
        )
        await self.queue(DLQ).remove(dlq_job_id)
        return job

    async def remove(self, queue: str, job_id: str) -> bool:
        q = self.queue(queue)
        if await q.getJob(job_id) is None or await self._state(queue, job_id) == "active":
            return False
        return bool(await q.remove(job_id))

    async def counts(self, queue: str) -> dict[JobState, int]:
        raw = await self.queue(queue).getJobCounts()
        counts = dict.fromkeys(JobState, 0)
        for name, n in raw.items():
            state = _STATE_OF.get(name)
            if state is not None:
                counts[state] += int(n)
        return counts

    async def ping(self) -> None:
        if self._redis is None:
            self._redis = Redis.from_url(
                self.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0
            )
        await self._redis.ping()

    async def dead_letter(self, job: Job, reason: str) -> Job:
        """Copy a job that will not run again to the DLQ, with its reason and queue."""
        return await self.enqueue(
            DLQ,
            job.name,
            {
                "original_queue": job.queue,
                "original_job_id": job.id,
                "reason": reason,
                "attempts_made": job.attempts_made,
                "data": {k: v for k, v in job.data.items() if k != RETRIED_FROM},
            },
        )

    async def close(self) -> None:
        for queue in self._queues.values():
            await queue.close()
        self._queues.clear()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


Schedule = tuple[str, str, float]
"""A repeatable job: queue, job name, period in seconds."""


class QueueWorkers:
    """BullMQ workers for some queues of a `BullQueue`, in one process."""

    def __init__(
        self,
        queue: BullQueue,
        *,
        lock_seconds: float = 30.0,
        stalled_check_seconds: float = 30.0,
    ) -> None:
        self.queue = queue
        self.lock_seconds = lock_seconds
        self.stalled_check_seconds = stalled_check_seconds
        self._handlers: dict[str, tuple[Handler, ExhaustedHook | None, int]] = {}
        self._workers: builtins.list[bullmq.Worker] = []
        self._tasks: builtins.list[asyncio.Task[Any]] = []

    def process(
        self,
        queue: str,
        handler: Handler,
        *,
        concurrency: int = 1,
        on_exhausted: ExhaustedHook | None = None,
    ) -> None:
        """Run ``handler`` for the jobs of ``queue``; ``on_exhausted`` after a last failure."""
        self._handlers[queue] = (handler, on_exhausted, concurrency)

    def _processor(
        self, queue: str, handler: Handler, on_exhausted: ExhaustedHook | None
    ) -> Callable[[Any, str], Awaitable[Any]]:
        options = self.queue.options

        async def process(raw: Any, token: str) -> Any:
            job = to_job(queue, raw, JobState.ACTIVE, options)
            try:
                with anyio.fail_after(options.timeout_seconds):
                    return await handler(job)
            except Exception as exc:
                reason = (
                    f"timed out after {options.timeout_seconds:g} s"
                    if isinstance(exc, TimeoutError)
                    else f"{type(exc).__name__}: {exc}"
                )
                job.attempts_made += 1
                job.failed_reason = reason
                if job.attempts_made >= job.options.attempts:
                    with anyio.CancelScope(shield=True):
                        await self._exhausted(job, reason, on_exhausted)
                else:
                    tries = job.attempts_made
                    logger.info("job %s/%s failed (%s); try %d", queue, job.id, reason, tries)
                raise JobFailed(reason) from None

        return process

    async def _exhausted(self, job: Job, reason: str, hook: ExhaustedHook | None) -> None:
        logger.warning("job %s/%s exhausted its attempts: %s", job.queue, job.id, reason)
        if hook is not None:
            try:
                await hook(job)
            except Exception:
                logger.exception("the exhausted-job hook of %s failed", job.queue)
        await self.queue.dead_letter(job, reason)

    async def start(self, schedules: Sequence[Schedule] = ()) -> None:
        """Start a worker per queue, and make sure the repeatable jobs exist."""
        for name, (handler, hook, concurrency) in self._handlers.items():
            worker = bullmq.Worker(
                name,
                self._processor(name, handler, hook),
                {
                    "connection": self.queue.redis_url,
                    "prefix": self.queue.prefix,
                    "concurrency": concurrency,
                    "lockDuration": round(self.lock_seconds * 1000),
                    "stalledInterval": round(self.stalled_check_seconds * 1000),
                    "maxStalledCount": 1,
                    "autorun": False,
                },
            )
            worker.on("error", lambda err, *_: logger.warning("worker error: %r", err))
            self._workers.append(worker)
            self._tasks.append(asyncio.ensure_future(worker.run()))
        for queue, job_name, every in schedules:
            await self.queue.queue(queue).upsertJobScheduler(
                job_name,
                {"every": round(every * 1000)},
                job_name,
                {},
                {"attempts": 1, "removeOnComplete": 100, "removeOnFail": 100},
            )

    async def close(self, *, force: bool = False) -> None:
        """Stop taking jobs and wait for the active ones (each bounded by its timeout);
        ``force`` cancels them instead (BullMQ redelivers them as stalled)."""
        await asyncio.gather(*(worker.close(force) for worker in self._workers))
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._workers.clear()
        self._tasks.clear()
