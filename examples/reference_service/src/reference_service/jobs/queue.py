"""The service's job queue interface, shaped after BullMQ so the real mode can swap it in.

Queues have names (the original plan's ``intent-queue``, ``payout-queue``,
``reconciler-queue`` and ``dead-letter-queue``); a job has a name, JSON data, a state and
the options the plan configures for every job: 5 attempts in all, exponential backoff from
1 s (waits of 1, 2, 4 and 8 s), a per-job timeout (BullMQ's stalled check only catches dead
workers, not hung jobs), and bounded retention of finished jobs (the last 1,000 completed and
5,000 failed). A job that fails its last attempt is copied to the dead-letter queue with its
reason and original queue, where an operator lists it and retries it.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "DLQ",
    "INTENT_QUEUE",
    "PAYOUT_QUEUE",
    "QUEUES",
    "RECONCILER_QUEUE",
    "RETRIED_FROM",
    "Handler",
    "Job",
    "JobNotFound",
    "JobOptions",
    "JobQueue",
    "JobState",
]

INTENT_QUEUE = "intent-queue"
PAYOUT_QUEUE = "payout-queue"
RECONCILER_QUEUE = "reconciler-queue"
DLQ = "dead-letter-queue"
QUEUES = (INTENT_QUEUE, PAYOUT_QUEUE, RECONCILER_QUEUE, DLQ)


class JobState(enum.StrEnum):
    WAITING = "waiting"
    DELAYED = "delayed"
    """Waiting out its backoff before the next attempt."""
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"


class JobNotFound(LookupError):
    """No such job in that queue (or it was removed by retention)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JobOptions:
    """BullMQ's ``defaultJobOptions`` from the original plan, plus a timeout."""

    attempts: int = 5
    """Tries in all, the first included (BullMQ counts them so)."""
    backoff_seconds: float = 1.0
    """The wait before the second try; it doubles for each try after that."""
    timeout_seconds: float = 30.0
    remove_on_complete: int = 1000
    remove_on_fail: int = 5000

    def backoff(self, attempts_made: int) -> float:
        """The wait after ``attempts_made`` failed tries: 1, 2, 4, 8 s with the defaults."""
        return float(self.backoff_seconds * 2 ** (attempts_made - 1))


@dataclass(slots=True, kw_only=True)
class Job:
    """One job and what happened to it; ``data`` is JSON-serialisable."""

    id: str
    queue: str
    name: str
    data: dict[str, Any]
    options: JobOptions
    state: JobState = JobState.WAITING
    attempts_made: int = 0
    created_at: float = 0.0
    run_at: float = 0.0
    """When a delayed job becomes due (the queue's clock)."""
    finished_at: float | None = None
    failed_reason: str | None = None
    result: Any = None
    history: list[str] = field(default_factory=list)
    """The reason of every failed attempt, oldest first."""
    redelivered: bool = False
    """This try follows one that never finished (its worker died): the real engine's
    stalled-job check gave the job back, so whatever the dead try took is abandoned."""

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "queue": self.queue,
            "name": self.name,
            "data": self.data,
            "state": self.state.value,
            "attempts_made": self.attempts_made,
            "max_attempts": self.options.attempts,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "failed_reason": self.failed_reason,
        }


RETRIED_FROM = "retried_from"
"""Set in a job's data by `JobQueue.retry`: the dead-letter job an operator retried."""

Handler = Callable[[Job], Awaitable[Any]]
"""Processes a job; raising fails the attempt."""
ExhaustedHook = Callable[[Job], Awaitable[None]]
"""Called once a job has failed its last attempt, before it is copied to the DLQ."""


class JobQueue(Protocol):
    """The operations the service and its admin API need from a queue engine."""

    async def enqueue(
        self,
        queue: str,
        name: str,
        data: Mapping[str, Any],
        *,
        job_id: str | None = None,
        options: JobOptions | None = None,
    ) -> Job:
        """Add a job; with ``job_id``, adding an id the queue still holds returns that job."""
        ...

    async def get(self, queue: str, job_id: str) -> Job | None: ...

    async def list(
        self, queue: str, states: Sequence[JobState], *, offset: int = 0, limit: int = 50
    ) -> list[Job]:
        """Jobs in those states, newest first."""
        ...

    async def retry(self, dlq_job_id: str) -> Job:
        """Move a dead-lettered job back to its original queue with fresh attempts.

        Returns the new job; raises `JobNotFound` for an unknown id.
        """
        ...

    async def remove(self, queue: str, job_id: str) -> bool: ...

    async def counts(self, queue: str) -> dict[JobState, int]: ...

    async def ping(self) -> None:
        """Raise when the queue cannot take jobs (the readiness probe asks)."""
        ...
