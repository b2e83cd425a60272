"""`ReferenceService`: the service's parts, built once per app, and the jobs they run.

Routes reach everything through it (``request.app.state.service``), tests build one with a
fake clock and drive its queue by hand, and part 2's real mode swaps the queue and the
stores for Redis- and PostgreSQL-backed ones without touching the routes.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from prometheus_client import CollectorRegistry

from bastion.stores import MemoryStore
from bastion.stores.sql import SQLStore
from reference_service.amounts import to_units
from reference_service.db.models import Base, Intent, IntentStatus, IntentType
from reference_service.db.repository import Database
from reference_service.jobs.memory import InProcessQueue
from reference_service.jobs.queue import (
    DLQ,
    INTENT_QUEUE,
    PAYOUT_QUEUE,
    RECONCILER_QUEUE,
    Job,
    JobOptions,
    JobQueue,
)
from reference_service.metrics import DomainMetrics
from reference_service.relayer import DISTRIBUTOR, Relayer, SimulatedChain, Transaction, encode_call
from reference_service.settings import ServiceSettings

__all__ = ["ReferenceService", "settlement_transaction"]

logger = logging.getLogger("reference_service")

QUEUE_OF = {IntentType.CLAIM.value: INTENT_QUEUE, IntentType.PAYOUT.value: PAYOUT_QUEUE}


def settlement_transaction(intent: Intent, chain_id: int) -> Transaction:
    """The on-chain transfer of an intent; deterministic, so a resend is the same tx."""
    return Transaction(
        to=DISTRIBUTOR,
        data=encode_call(
            "settle(bytes32,bytes32,address,uint256)",
            intent.program_id,
            intent.id,
            intent.wallet,
            intent.amount_units,
        ),
        chain_id=chain_id,
    )


class ReferenceService:
    """Settings, database, bastion's stores, the queue, the relayer and the metrics."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        engine: Any,
        registry: CollectorRegistry,
        clock: Any = time.time,
        queue: JobQueue | None = None,
        relayer: Relayer | None = None,
        rate_limit_store: Any = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.registry = registry
        self.db = Database(engine)
        # the idempotency records live beside the domain's rows, so a handler's writes and
        # its stored response commit in one transaction (SQLStore.transaction)
        self.idempotency_store = SQLStore(engine, metadata=Base.metadata)
        self.rate_limit_store = rate_limit_store if rate_limit_store is not None else MemoryStore()
        self.relayer: Relayer = relayer or SimulatedChain(
            chain_id=settings.chain_id,
            balance_eth=settings.relayer_balance_eth,
            fail_rate=settings.relayer_fail_rate,
            hang_rate=settings.relayer_hang_rate,
            seed=settings.relayer_seed,
        )
        self.job_options = JobOptions(
            attempts=settings.job_attempts,
            backoff_seconds=settings.job_backoff_seconds,
            timeout_seconds=settings.job_timeout_seconds,
        )
        if queue is None:
            queue = InProcessQueue(options=self.job_options, clock=clock)
        self.queue = queue
        self.metrics = DomainMetrics(registry)
        if isinstance(queue, InProcessQueue):
            self.register_handlers(queue)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def register_handlers(self, queue: InProcessQueue) -> None:
        """Attach the job handlers (part 2's workers call the same methods)."""
        concurrency = self.settings.job_concurrency
        queue.process(
            INTENT_QUEUE, self.settle_job, concurrency=concurrency, on_exhausted=self.give_up
        )
        queue.process(
            PAYOUT_QUEUE, self.settle_job, concurrency=concurrency, on_exhausted=self.give_up
        )
        queue.process(RECONCILER_QUEUE, self.reconcile_job)

    async def seed_programs(self) -> None:
        async with self.db.write() as repo:
            for seed in self.settings.programs:
                await repo.ensure_program(seed.id, seed.name, to_units(seed.budget), self.now())

    async def enqueue_intent(self, intent_id: str, intent_type: str) -> Job:
        return await self.queue.enqueue(
            QUEUE_OF[intent_type],
            f"settle-{intent_type}",
            {"intent_id": intent_id},
            job_id=f"intent:{intent_id}",
        )

    # -- jobs -------------------------------------------------------------------------------

    async def settle_job(self, job: Job) -> dict[str, Any]:
        """Take the intent, send its transfer, settle it with its ledger entries.

        The send happens outside any database transaction (it may take seconds); a failed or
        timed-out send puts the intent back to PENDING, and the queue retries the job.
        """
        intent_id = str(job.data["intent_id"])
        async with self.db.write() as repo:
            intent = await repo.take_intent(intent_id, self.now())
            if intent is None:
                current = await repo.intent(intent_id)
                return {"skipped": current.status if current else "unknown intent"}
        self.metrics.intent_transitions.labels(intent.type, IntentStatus.PROCESSING.value).inc()
        tx = settlement_transaction(intent, self.relayer.chain_id)
        try:
            with anyio.fail_after(self.settings.relayer_timeout_seconds):
                receipt = await self.relayer.send(tx)
        except BaseException as exc:
            reason = "the relayer timed out" if isinstance(exc, TimeoutError) else str(exc)
            reason = reason or type(exc).__name__
            with anyio.CancelScope(shield=True):
                async with self.db.write() as repo:
                    await repo.release_intent(intent_id, reason)
            raise
        now = self.now()
        async with self.db.write() as repo:
            settled = await repo.settle_intent(intent, receipt.tx_hash, now)
        if settled:
            self.metrics.intent_transitions.labels(intent.type, IntentStatus.SETTLED.value).inc()
            created = intent.created_at
            self.metrics.settlement_duration.labels(intent.type).observe(
                max(0.0, (now - created).total_seconds())
            )
        return {"tx_hash": receipt.tx_hash, "settled": settled}

    async def give_up(self, job: Job) -> None:
        """A job's last attempt failed: its intent is FAILED until an operator retries it."""
        intent_id = job.data.get("intent_id")
        if intent_id is None:
            return
        async with self.db.write() as repo:
            failed = await repo.fail_intent(str(intent_id), job.failed_reason or "failed")
            intent = await repo.intent(str(intent_id))
        if failed and intent is not None:
            self.metrics.intent_transitions.labels(intent.type, IntentStatus.FAILED.value).inc()

    async def reconcile_job(self, job: Job) -> dict[str, int]:
        """The sweeper and the outbox in one pass.

        Intents stuck in PROCESSING longer than ``stuck_after_seconds`` (their worker died)
        are marked FAILED and put in the dead-letter queue. Intents still PENDING a while
        after creation get their job enqueued again (a restart of embedded mode forgets its
        queue; the job id makes this a no-op while the job is still queued).
        """
        now = self.now()
        cutoff = now - timedelta(seconds=self.settings.stuck_after_seconds)
        async with self.db.write() as repo:
            stuck = list(await repo.stuck_intents(cutoff))
            for intent in stuck:
                await repo.fail_intent(intent.id, "stuck in PROCESSING: processing timeout")
        for intent in stuck:
            self.metrics.intent_transitions.labels(intent.type, IntentStatus.FAILED.value).inc()
            queue = QUEUE_OF[intent.type]
            await self.queue.enqueue(
                DLQ,
                f"stuck-{intent.type}",
                {
                    "original_queue": queue,
                    "original_job_id": f"intent:{intent.id}",
                    "reason": "stuck in PROCESSING",
                    "attempts_made": intent.attempts,
                    "data": {"intent_id": intent.id},
                },
            )
            logger.warning("intent %s was stuck in PROCESSING; moved to the DLQ", intent.id)
        async with self.db.read() as repo:
            pending = await repo.pending_intents(now - timedelta(seconds=30))
        for intent in pending:
            await self.enqueue_intent(intent.id, intent.type)
        return {"swept": len(stuck), "requeued": len(pending)}

    async def reconcile_loop(self) -> None:
        """Enqueue the reconciler every ``reconcile_every_seconds`` (embedded mode)."""
        while True:
            await anyio.sleep(self.settings.reconcile_every_seconds)
            await self.queue.enqueue(RECONCILER_QUEUE, "reconcile", {}, job_id="reconcile")

    async def aclose(self) -> None:
        await self.db.engine.dispose()
