"""`ReferenceService`: the service's parts, built once per app, and the jobs they run.

Routes reach everything through it (``request.app.state.service``), tests build one with a
fake clock and drive its queue by hand, and part 2's real mode swaps the queue and the
stores for Redis- and PostgreSQL-backed ones without touching the routes.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import IntegrityError

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
    RETRIED_FROM,
    Job,
    JobOptions,
    JobQueue,
    JobState,
)
from reference_service.metrics import DomainMetrics
from reference_service.relayer import DISTRIBUTOR, Relayer, SimulatedChain, Transaction, encode_call
from reference_service.settings import ServiceSettings

__all__ = ["ReferenceService", "settlement_transaction"]

logger = logging.getLogger("reference_service")

if TYPE_CHECKING:
    from reference_service.jobs.bull import QueueWorkers

SWEEP = "sweep"
RECONCILE = "reconcile"
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
        self.job_options = JobOptions(
            attempts=settings.job_attempts,
            backoff_seconds=settings.job_backoff_seconds,
            timeout_seconds=settings.job_timeout_seconds,
        )
        self._redis: Any = None
        if settings.embedded:
            default_store: Any = MemoryStore()
            default_relayer: Relayer = SimulatedChain(
                chain_id=settings.chain_id,
                balance_eth=settings.relayer_balance_eth,
                fail_rate=settings.relayer_fail_rate,
                hang_rate=settings.relayer_hang_rate,
                seed=settings.relayer_seed,
            )
        else:
            from redis.asyncio import Redis

            from bastion.stores import RedisStore
            from reference_service.jobs.bull import BullQueue
            from reference_service.relayer import RedisChain

            self._redis = Redis.from_url(
                settings.redis_url, socket_timeout=5.0, socket_connect_timeout=2.0
            )
            default_store = (
                SQLStore(engine, metadata=Base.metadata)
                if settings.rate_limit_store == "sql"
                else RedisStore(url=settings.redis_url, prefix=f"{settings.queue_prefix}:bastion")
            )
            default_relayer = RedisChain(
                self._redis,
                prefix=settings.queue_prefix,
                chain_id=settings.chain_id,
                balance_eth=settings.relayer_balance_eth,
                fail_rate=settings.relayer_fail_rate,
                hang_rate=settings.relayer_hang_rate,
            )
            if queue is None:
                queue = BullQueue(
                    settings.redis_url, prefix=settings.queue_prefix, options=self.job_options
                )
        self.rate_limit_store = rate_limit_store if rate_limit_store is not None else default_store
        self.relayer: Relayer = relayer or default_relayer
        if queue is None:
            queue = InProcessQueue(options=self.job_options, clock=clock)
        self.queue = queue
        self.metrics = DomainMetrics(registry)
        if isinstance(queue, InProcessQueue):
            self.register_handlers(queue)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def register_handlers(self, queue: InProcessQueue | QueueWorkers) -> None:
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
        """Create the configured programs that do not exist yet. Every worker process runs
        this as it starts, at the same moment: one that finds a program missing and then
        loses the insert to another worker goes on, the program being there."""
        for seed in self.settings.programs:
            try:
                async with self.db.write() as repo:
                    await repo.ensure_program(seed.id, seed.name, to_units(seed.budget), self.now())
            except IntegrityError:
                async with self.db.read() as repo:
                    if await repo.program(seed.id) is None:
                        raise

    async def enqueue_committed(self, intent_id: str, intent_type: str) -> None:
        """Enqueue an intent whose row and stored response have just committed.

        The answer is already the client's (a retry replays it), so a queue that cannot be
        reached must not turn it into a 5xx: the intent stays PENDING and the reconciler
        enqueues it once the queue is back.
        """
        try:
            await self.enqueue_intent(intent_id, intent_type)
        except Exception:
            logger.warning(
                "enqueueing intent %s failed; the reconciler will enqueue it",
                intent_id,
                exc_info=True,
            )

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
            intent = await repo.take_intent(
                intent_id,
                self.now(),
                failed=RETRIED_FROM in job.data,
                abandoned=job.redelivered,
            )
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
                    await repo.release_intent(intent_id, reason, intent.attempts)
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

    async def reconcile_job(self, job: Job) -> dict[str, Any]:
        """The reconciler queue's jobs: ``sweep``, or ``reconcile`` (embedded: both).

        In real mode the two are BullMQ job schedulers: the sweeper every 15 minutes, the
        reconciler every minute, each once per period across all worker processes.
        """
        if job.name == SWEEP:
            return {"swept": await self.sweep()}
        swept = await self.sweep() if isinstance(self.queue, InProcessQueue) else 0
        requeued = await self.requeue_pending()
        report = await self.reconcile()
        return {"swept": swept, "requeued": requeued, **report}

    async def sweep(self) -> int:
        """Intents stuck in PROCESSING longer than ``stuck_after_seconds`` (their worker
        died, and BullMQ gave up on the job) are marked FAILED and put in the DLQ."""
        cutoff = self.now() - timedelta(seconds=self.settings.stuck_after_seconds)
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
        return len(stuck)

    async def requeue_pending(self) -> int:
        """Intents still PENDING 30 s after creation get their job enqueued again (a crash
        between a commit and its enqueue, or an embedded restart, lost it; the job id makes
        this a no-op while the job is still queued)."""
        async with self.db.read() as repo:
            pending = await repo.pending_intents(self.now() - timedelta(seconds=30))
        for intent in pending:
            await self.enqueue_intent(intent.id, intent.type)
        return len(pending)

    async def reconcile(self) -> dict[str, Any]:
        """Check the ledger balances per program and that settled intents match the chain.

        A mismatch is logged and reported; the report is the job's result, where ``/readyz``
        and ``/metrics`` read it in every process.
        """
        async with self.db.read() as repo:
            sums = await repo.ledger_sums()
            settled = await repo.settled_intents()
        unbalanced = {program: total for program, total in sums.items() if total != 0}
        missing: list[str] = []
        for intent in settled:
            expected = settlement_transaction(intent, self.relayer.chain_id).hash()
            if intent.tx_hash != expected or await self.relayer.lookup(expected) is None:
                missing.append(intent.id)
        for program, total in unbalanced.items():
            logger.error("reconciler: the ledger of program %s sums to %d, not 0", program, total)
        if missing:
            logger.error(
                "reconciler: %d settled intents have no matching transaction on chain: %s",
                len(missing),
                ", ".join(missing[:10]),
            )
        return {
            "checked_at": self.clock(),
            "settled_intents": len(settled),
            "unbalanced_programs": unbalanced,
            "unmatched_intents": missing[:100],
            "mismatches": len(unbalanced) + len(missing),
        }

    async def last_reconciliation(self) -> dict[str, Any] | None:
        """The report of the latest finished reconciler run, from the queue (any process)."""
        jobs = await self.queue.list(RECONCILER_QUEUE, [JobState.COMPLETED], limit=20)
        for job in jobs:
            if job.name == RECONCILE and isinstance(job.result, dict):
                return dict(job.result)
        return None

    async def reconcile_loop(self) -> None:
        """Enqueue the reconciler every ``reconcile_every_seconds`` (embedded mode)."""
        while True:
            await anyio.sleep(self.settings.reconcile_every_seconds)
            await self.queue.enqueue(RECONCILER_QUEUE, RECONCILE, {}, job_id=RECONCILE)

    def schedules(self) -> list[tuple[str, str, float]]:
        """The real mode's repeatable jobs: the sweeper and the reconciler."""
        return [
            (RECONCILER_QUEUE, SWEEP, self.settings.sweep_every_seconds),
            (RECONCILER_QUEUE, RECONCILE, self.settings.reconcile_every_seconds),
        ]

    async def aclose(self) -> None:
        close = getattr(self.queue, "close", None)
        if close is not None:
            await close()
        aclose = getattr(self.rate_limit_store, "aclose", None)
        if aclose is not None and self.rate_limit_store is not self.idempotency_store:
            await aclose()
        if self._redis is not None:
            await self._redis.aclose()
        await self.db.engine.dispose()
