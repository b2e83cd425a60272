"""The domain's tables, and bastion's own idempotency tables on the same `MetaData`.

Keeping both on one `MetaData` lets one Alembic history create them together, and lets a
handler's rows and its stored idempotent response commit in one transaction
(`bastion.stores.sql.SQLStore.transaction`).

Amounts are integer micro-units (`reference_service.amounts`); times are UTC.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bastion.stores.sql import define_tables

__all__ = [
    "Base",
    "Claim",
    "ClaimStatus",
    "Intent",
    "IntentStatus",
    "IntentType",
    "LedgerEntry",
    "Payout",
    "Program",
    "Wallet",
    "WebhookEvent",
    "bastion_tables",
]

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; use UTC")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if not isinstance(value, datetime):
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


bastion_tables = define_tables(Base.metadata)
"""bastion's ``bastion_records`` and ``bastion_buckets``, migrated with the domain."""


class IntentStatus(enum.StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    SETTLED = "SETTLED"
    FAILED = "FAILED"


class IntentType(enum.StrEnum):
    CLAIM = "claim"
    PAYOUT = "payout"


class ClaimStatus(enum.StrEnum):
    PREPARED = "PREPARED"
    RECORDED = "RECORDED"
    SETTLED = "SETTLED"


def _status(enum_type: type[enum.StrEnum]) -> String:
    return String(max(len(member.value) for member in enum_type))


class Wallet(Base):
    __tablename__ = "wallets"

    address: Mapped[str] = mapped_column(String(42), primary_key=True)
    """EIP-55 checksummed, so one wallet has one row however a client spells it."""
    registration_tx: Mapped[str] = mapped_column(String(66))
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Program(Base):
    __tablename__ = "programs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    budget_units: Mapped[int] = mapped_column(BigInteger)
    """Everything the program may ever pay out; webhooks top it up."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Claim(Base):
    __tablename__ = "claims"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    wallet: Mapped[str] = mapped_column(ForeignKey("wallets.address"), index=True)
    program_id: Mapped[str] = mapped_column(ForeignKey("programs.id"), index=True)
    amount_units: Mapped[int] = mapped_column(BigInteger)
    nonce: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(_status(ClaimStatus))
    signature: Mapped[str | None] = mapped_column(String(132))
    prepared_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    recorded_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Intent(Base):
    """Money the service has promised to move on chain; jobs settle it.

    ``PENDING → PROCESSING → SETTLED | FAILED``. A job takes an intent by moving it to
    PROCESSING with ``locked_at``; a failed try puts it back to PENDING with ``last_error``;
    the last failed try, or the sweeper finding it stuck in PROCESSING, marks it FAILED and
    puts its job in the dead-letter queue, from which an operator may retry it.
    """

    __tablename__ = "intents"
    __table_args__ = (Index("ix_intents_status_locked_at", "status", "locked_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    type: Mapped[str] = mapped_column(_status(IntentType))
    status: Mapped[str] = mapped_column(_status(IntentStatus))
    program_id: Mapped[str] = mapped_column(ForeignKey("programs.id"), index=True)
    wallet: Mapped[str] = mapped_column(ForeignKey("wallets.address"))
    amount_units: Mapped[int] = mapped_column(BigInteger)
    claim_id: Mapped[str | None] = mapped_column(ForeignKey("claims.id"), unique=True)
    payout_id: Mapped[str | None] = mapped_column(ForeignKey("payouts.id"), unique=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    locked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    tx_hash: Mapped[str | None] = mapped_column(String(66))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Payout(Base):
    __tablename__ = "payouts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    batch_id: Mapped[str] = mapped_column(String(40), index=True)
    row: Mapped[int] = mapped_column(Integer)
    program_id: Mapped[str] = mapped_column(ForeignKey("programs.id"), index=True)
    wallet: Mapped[str] = mapped_column(ForeignKey("wallets.address"))
    amount_units: Mapped[int] = mapped_column(BigInteger)
    reference: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WebhookEvent(Base):
    """One row per provider event id: the primary key is the deduplication."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    outcome: Mapped[str] = mapped_column(String(200))


class LedgerEntry(Base):
    """Double entry: each settlement writes a debit and a credit of one program.

    The program's pool account is debited and the wallet's account credited by the same
    amount, in the transaction that settles the intent; so the entries of any program sum to
    zero at every commit.
    """

    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    program_id: Mapped[str] = mapped_column(ForeignKey("programs.id"), index=True)
    intent_id: Mapped[str] = mapped_column(ForeignKey("intents.id"), index=True)
    account: Mapped[str] = mapped_column(String(80))
    amount_units: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
