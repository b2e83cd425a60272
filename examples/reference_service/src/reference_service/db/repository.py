"""The repository: every query the domain makes, over one SQLAlchemy session.

Handlers and jobs never write SQL of their own; they open a unit of work (`Database.write`,
or `SQLStore.transaction` for an idempotent handler, whose connection this wraps) and call
these methods. The queries are portable SQLAlchemy (SQLite now, PostgreSQL in real mode):
rows that decide a budget are read with ``FOR UPDATE`` where the database has it, and SQLite
write transactions take the database's write lock up front (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from reference_service.db.models import (
    Claim,
    ClaimStatus,
    Intent,
    IntentStatus,
    IntentType,
    LedgerEntry,
    Payout,
    Program,
    Wallet,
    WebhookEvent,
)

__all__ = ["Database", "Repository", "new_id", "pool_account", "wallet_account"]


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def pool_account(program_id: str) -> str:
    return f"program:{program_id}:pool"


def wallet_account(address: str) -> str:
    return f"wallet:{address}"


async def begin_write(conn: AsyncConnection) -> None:
    """Start a write transaction; on SQLite, take the write lock now (``BEGIN IMMEDIATE``).

    A deferred SQLite transaction that reads, then writes after another writer committed,
    fails at once with "database is locked" instead of waiting its turn.
    """
    await conn.begin()
    if conn.dialect.name == "sqlite":
        raw = await conn.get_raw_connection()
        if not getattr(raw.driver_connection, "in_transaction", True):
            await conn.exec_driver_sql("BEGIN IMMEDIATE")


class Repository:
    """Queries and writes of one unit of work; the caller commits."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def flush(self) -> None:
        await self.session.flush()

    # -- wallets and programs --------------------------------------------------------------

    async def wallet(self, address: str) -> Wallet | None:
        return await self.session.get(Wallet, address)

    async def add_wallet(self, address: str, tx_hash: str, now: datetime) -> Wallet:
        wallet = Wallet(address=address, registration_tx=tx_hash, registered_at=now)
        self.session.add(wallet)
        await self.session.flush()
        return wallet

    async def program(self, program_id: str, *, lock: bool = False) -> Program | None:
        stmt = select(Program).where(Program.id == program_id)
        if lock:
            stmt = stmt.with_for_update()
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def programs(self) -> Sequence[Program]:
        return (await self.session.execute(select(Program).order_by(Program.id))).scalars().all()

    async def ensure_program(self, program_id: str, name: str, budget: int, now: datetime) -> None:
        if await self.program(program_id) is None:
            self.session.add(Program(id=program_id, name=name, budget_units=budget, created_at=now))
            await self.session.flush()

    async def committed_units(self, program_id: str) -> int:
        """What the program has promised: every intent counts, failed ones included, since
        a failed intent waits in the dead-letter queue for an operator to retry it."""
        stmt = select(func.coalesce(func.sum(Intent.amount_units), 0)).where(
            Intent.program_id == program_id
        )
        return int((await self.session.execute(stmt)).scalar_one())

    async def add_budget(self, program_id: str, units: int) -> None:
        await self.session.execute(
            update(Program)
            .where(Program.id == program_id)
            .values(budget_units=Program.budget_units + units)
        )

    # -- claims ----------------------------------------------------------------------------

    async def next_nonce(self, wallet: str) -> int:
        stmt = select(func.count()).select_from(Claim).where(Claim.wallet == wallet)
        return int((await self.session.execute(stmt)).scalar_one()) + 1

    async def add_claim(self, claim: Claim) -> Claim:
        self.session.add(claim)
        await self.session.flush()
        return claim

    async def claim(self, claim_id: str, *, lock: bool = False) -> Claim | None:
        stmt = select(Claim).where(Claim.id == claim_id)
        if lock:
            stmt = stmt.with_for_update()
        return (await self.session.execute(stmt)).scalar_one_or_none()

    # -- intents ---------------------------------------------------------------------------

    async def add_intent(
        self,
        *,
        type: IntentType,
        program_id: str,
        wallet: str,
        amount_units: int,
        now: datetime,
        claim_id: str | None = None,
        payout_id: str | None = None,
    ) -> Intent:
        intent = Intent(
            id=new_id("int"),
            type=type.value,
            status=IntentStatus.PENDING.value,
            program_id=program_id,
            wallet=wallet,
            amount_units=amount_units,
            claim_id=claim_id,
            payout_id=payout_id,
            attempts=0,
            created_at=now,
        )
        self.session.add(intent)
        await self.session.flush()
        return intent

    async def intent(self, intent_id: str) -> Intent | None:
        return await self.session.get(Intent, intent_id)

    async def take_intent(
        self, intent_id: str, now: datetime, *, failed: bool = True, abandoned: bool = False
    ) -> Intent | None:
        """Move an intent to PROCESSING for one job; None when the job may not take it.

        A PENDING intent is always taken. ``failed``: a FAILED one too (an operator retried
        it from the dead-letter queue; a job still running when the sweeper failed its
        intent must not settle it behind the operator's back). ``abandoned``: a PROCESSING
        one too (the queue gave the job back after its worker died mid-try). Taking twice is
        harmless: the chain deduplicates the transfer and `settle_intent` settles once.
        """
        statuses = [IntentStatus.PENDING.value]
        if failed:
            statuses.append(IntentStatus.FAILED.value)
        if abandoned:
            statuses.append(IntentStatus.PROCESSING.value)
        result = await self.session.execute(
            update(Intent)
            .where(Intent.id == intent_id, Intent.status.in_(statuses))
            .values(
                status=IntentStatus.PROCESSING.value,
                locked_at=now,
                attempts=Intent.attempts + 1,
            )
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) != 1:
            return None
        return await self.session.get(Intent, intent_id, populate_existing=True)

    async def _move(
        self, intent_id: str, to: IntentStatus, attempt: int | None = None, **values: object
    ) -> bool:
        """PROCESSING to ``to``; with ``attempt``, only for the try that took it (a fencing
        token: a try whose intent was taken over after it was presumed dead changes nothing)."""
        where = [Intent.id == intent_id, Intent.status == IntentStatus.PROCESSING.value]
        if attempt is not None:
            where.append(Intent.attempts == attempt)
        result = await self.session.execute(
            update(Intent)
            .where(*where)
            .values(status=to.value, **values)
            .execution_options(synchronize_session=False)
        )
        return bool(getattr(result, "rowcount", 0) == 1)

    async def release_intent(self, intent_id: str, error: str, attempt: int | None = None) -> bool:
        """A failed try: back to PENDING for the next one, with the reason."""
        return await self._move(
            intent_id, IntentStatus.PENDING, attempt, locked_at=None, last_error=error
        )

    async def fail_intent(self, intent_id: str, error: str) -> bool:
        """The last try failed (or the sweeper found it stuck): FAILED, for the DLQ."""
        result = await self.session.execute(
            update(Intent)
            .where(
                Intent.id == intent_id,
                Intent.status.in_([IntentStatus.PENDING.value, IntentStatus.PROCESSING.value]),
            )
            .values(status=IntentStatus.FAILED.value, locked_at=None, last_error=error)
            .execution_options(synchronize_session=False)
        )
        return bool(getattr(result, "rowcount", 0) == 1)

    async def settle_intent(self, intent: Intent, tx_hash: str, now: datetime) -> bool:
        """SETTLED, with the two ledger entries and the claim, or nothing if it moved on."""
        if not await self._move(
            intent.id,
            IntentStatus.SETTLED,
            intent.attempts,
            tx_hash=tx_hash,
            settled_at=now,
            locked_at=None,
        ):
            return False
        self.session.add_all(
            [
                LedgerEntry(
                    program_id=intent.program_id,
                    intent_id=intent.id,
                    account=pool_account(intent.program_id),
                    amount_units=-intent.amount_units,
                    created_at=now,
                ),
                LedgerEntry(
                    program_id=intent.program_id,
                    intent_id=intent.id,
                    account=wallet_account(intent.wallet),
                    amount_units=intent.amount_units,
                    created_at=now,
                ),
            ]
        )
        if intent.claim_id is not None:
            await self.session.execute(
                update(Claim)
                .where(Claim.id == intent.claim_id)
                .values(status=ClaimStatus.SETTLED.value)
            )
        await self.session.flush()
        return True

    async def stuck_intents(self, locked_before: datetime) -> Sequence[Intent]:
        stmt = select(Intent).where(
            Intent.status == IntentStatus.PROCESSING.value, Intent.locked_at < locked_before
        )
        return (await self.session.execute(stmt)).scalars().all()

    async def settled_intents(self) -> Sequence[Intent]:
        stmt = select(Intent).where(Intent.status == IntentStatus.SETTLED.value)
        return (await self.session.execute(stmt)).scalars().all()

    async def pending_intents(self, created_before: datetime, limit: int = 500) -> Sequence[Intent]:
        stmt = (
            select(Intent)
            .where(Intent.status == IntentStatus.PENDING.value, Intent.created_at < created_before)
            .order_by(Intent.created_at)
            .limit(limit)
        )
        return (await self.session.execute(stmt)).scalars().all()

    async def intent_counts(self) -> dict[tuple[str, str], int]:
        stmt = select(Intent.type, Intent.status, func.count()).group_by(Intent.type, Intent.status)
        return {(t, s): int(n) for t, s, n in (await self.session.execute(stmt)).all()}

    # -- payouts ---------------------------------------------------------------------------

    async def add_payouts(self, payouts: Iterable[Payout]) -> None:
        self.session.add_all(list(payouts))
        await self.session.flush()

    async def registered(self, addresses: Iterable[str]) -> set[str]:
        wanted = set(addresses)
        if not wanted:
            return set()
        stmt = select(Wallet.address).where(Wallet.address.in_(wanted))
        return set((await self.session.execute(stmt)).scalars().all())

    # -- webhooks and the ledger -----------------------------------------------------------

    async def webhook_event(self, event_id: str) -> WebhookEvent | None:
        return await self.session.get(WebhookEvent, event_id)

    async def add_webhook_event(self, event: WebhookEvent) -> bool:
        """Record an event id; False when another delivery recorded it first."""
        try:
            async with self.session.begin_nested():
                self.session.add(event)
        except IntegrityError:
            return False
        return True

    async def ledger_sums(self) -> dict[str, int]:
        stmt = select(LedgerEntry.program_id, func.sum(LedgerEntry.amount_units)).group_by(
            LedgerEntry.program_id
        )
        return {p: int(total) for p, total in (await self.session.execute(stmt)).all()}

    async def ledger(self, program_id: str) -> Sequence[LedgerEntry]:
        stmt = select(LedgerEntry).where(LedgerEntry.program_id == program_id)
        return (await self.session.execute(stmt.order_by(LedgerEntry.id))).scalars().all()


class Database:
    """The domain's engine and its units of work."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Repository]:
        """A transaction that commits when the block ends without an exception."""
        async with self.engine.connect() as conn:
            await begin_write(conn)
            async with self.on(conn) as repo:
                yield repo
            await conn.commit()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Repository]:
        async with self.engine.connect() as conn, self.on(conn) as repo:
            yield repo

    @staticmethod
    @asynccontextmanager
    async def on(conn: AsyncConnection) -> AsyncIterator[Repository]:
        """A repository writing through ``conn``, in whatever transaction it is in.

        This is how an idempotent handler joins ``SQLStore.transaction``: its rows and its
        stored response then commit together.
        """
        async with AsyncSession(bind=conn, expire_on_commit=False, autoflush=True) as session:
            yield Repository(session)
            await session.flush()
