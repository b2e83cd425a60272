"""Background jobs: the queue interface, its in-process implementation, the job handlers."""

from reference_service.jobs.queue import (
    DLQ,
    INTENT_QUEUE,
    PAYOUT_QUEUE,
    QUEUES,
    RECONCILER_QUEUE,
    Job,
    JobOptions,
    JobQueue,
    JobState,
)

__all__ = [
    "DLQ",
    "INTENT_QUEUE",
    "PAYOUT_QUEUE",
    "QUEUES",
    "RECONCILER_QUEUE",
    "Job",
    "JobOptions",
    "JobQueue",
    "JobState",
]
