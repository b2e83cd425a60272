"""The domain's metrics, beside bastion's HTTP metrics on the service's own registry.

Counts that live in the database (intents by status, ledger balances) and in the queue are
read when Prometheus scrapes (`DomainMetrics.refresh`, called by ``/metrics``), so every
process of a deployment reports the same truth instead of its own share.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from reference_service.amounts import UNIT
from reference_service.db.models import IntentStatus, IntentType
from reference_service.db.repository import Repository
from reference_service.jobs.queue import DLQ, QUEUES, JobQueue, JobState
from reference_service.relayer import WEI_PER_ETH, Relayer

__all__ = ["DomainMetrics"]

SETTLEMENT_BUCKETS = (0.5, 1, 3, 5, 10, 30, 60, 120, 300)


class DomainMetrics:
    """Intents, settlements, the ledger, the queues, the relayer and webhooks."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.intents = Gauge(
            "bastion_service_intents",
            "Intents in the database by type and status.",
            ["type", "status"],
            registry=registry,
        )
        self.intent_transitions = Counter(
            "bastion_service_intent_transitions_total",
            "Intents that entered a status, by type and status, in this process.",
            ["type", "status"],
            registry=registry,
        )
        self.settlement_duration = Histogram(
            "bastion_service_settlement_duration_seconds",
            "From an intent's creation to its settlement on chain.",
            ["type"],
            buckets=SETTLEMENT_BUCKETS,
            registry=registry,
        )
        self.ledger_balance = Gauge(
            "bastion_service_ledger_balance",
            "Sum of a program's ledger entries, in tokens: double entry keeps it at 0.",
            ["program"],
            registry=registry,
        )
        self.queue_jobs = Gauge(
            "bastion_service_queue_jobs",
            "Jobs per queue and state.",
            ["queue", "state"],
            registry=registry,
        )
        self.dlq_jobs = Gauge(
            "bastion_service_dlq_jobs",
            "Jobs waiting in the dead-letter queue for an operator.",
            registry=registry,
        )
        self.relayer_balance = Gauge(
            "bastion_service_relayer_balance_eth",
            "What the relayer has left to pay gas with, in ETH.",
            registry=registry,
        )
        self.webhook_failures = Counter(
            "bastion_service_webhook_verification_failures_total",
            "Webhook deliveries refused by signature verification, by reason.",
            ["reason"],
            registry=registry,
        )
        self.webhook_events = Counter(
            "bastion_service_webhook_events_total",
            "Verified webhook deliveries, by outcome (processed, duplicate, ignored).",
            ["outcome"],
            registry=registry,
        )
        self.reconciliation_mismatches = Gauge(
            "bastion_service_reconciliation_mismatches",
            "Mismatches the latest reconciler run found: programs whose ledger does not sum to "
            "0, and settled intents without their transaction on chain.",
            ["check"],
            registry=registry,
        )
        self.reconciled_at = Gauge(
            "bastion_service_reconciliation_timestamp_seconds",
            "When the latest reconciler run finished (Unix time; 0 before the first).",
            registry=registry,
        )
        for check in ("ledger", "chain"):
            self.reconciliation_mismatches.labels(check).set(0)
        for intent_type in IntentType:
            for status in IntentStatus:
                self.intents.labels(intent_type.value, status.value).set(0)
                self.intent_transitions.labels(intent_type.value, status.value)
            self.settlement_duration.labels(intent_type.value)
        for reason in ("missing", "malformed", "stale", "mismatch"):
            self.webhook_failures.labels(reason)

    async def refresh(self, repo: Repository, queue: JobQueue, relayer: Relayer) -> None:
        counts = await repo.intent_counts()
        for intent_type in IntentType:
            for status in IntentStatus:
                value = counts.get((intent_type.value, status.value), 0)
                self.intents.labels(intent_type.value, status.value).set(value)
        sums = await repo.ledger_sums()
        for program in await repo.programs():
            self.ledger_balance.labels(program.id).set(sums.get(program.id, 0) / UNIT)
        for name in QUEUES:
            for state, n in (await queue.counts(name)).items():
                self.queue_jobs.labels(name, state.value).set(n)
        dlq = await queue.counts(DLQ)
        self.dlq_jobs.set(dlq[JobState.WAITING] + dlq[JobState.DELAYED])
        self.relayer_balance.set(await relayer.balance_wei() / WEI_PER_ETH)

    def reconciled(self, report: Mapping[str, Any] | None) -> None:
        """Show the latest reconciler report (read from the queue at each scrape)."""
        if report is None:
            return
        self.reconciliation_mismatches.labels("ledger").set(
            len(report.get("unbalanced_programs") or {})
        )
        self.reconciliation_mismatches.labels("chain").set(
            len(report.get("unmatched_intents") or [])
        )
        self.reconciled_at.set(float(report.get("checked_at") or 0))
