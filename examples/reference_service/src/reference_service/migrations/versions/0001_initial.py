"""wallets, programs, claims, intents, payouts, webhook events, ledger, bastion tables

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bastion_buckets",
        sa.Column(
            "key",
            sa.String(length=255)
            .with_variant(sa.VARBINARY(length=255), "mariadb")
            .with_variant(sa.VARBINARY(length=255), "mysql")
            .with_variant(sa.String(length=255, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("state_0", sa.BigInteger(), nullable=False),
        sa.Column("state_1", sa.BigInteger(), nullable=False),
        sa.Column("state_2", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_bastion_buckets")),
    )
    with op.batch_alter_table("bastion_buckets", schema=None) as batch_op:
        batch_op.create_index("ix_bastion_buckets_expires_at", ["expires_at"], unique=False)

    op.create_table(
        "bastion_records",
        sa.Column(
            "key",
            sa.String(length=255)
            .with_variant(sa.VARBINARY(length=255), "mariadb")
            .with_variant(sa.VARBINARY(length=255), "mysql")
            .with_variant(sa.String(length=255, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("fingerprint", sa.String(length=255), nullable=False),
        sa.Column(
            "token",
            sa.String(length=96)
            .with_variant(sa.VARBINARY(length=96), "mariadb")
            .with_variant(sa.VARBINARY(length=96), "mysql")
            .with_variant(sa.String(length=96, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "response",
            sa.LargeBinary()
            .with_variant(mysql.LONGBLOB(), "mariadb")
            .with_variant(mysql.LONGBLOB(), "mysql"),
            nullable=True,
        ),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_bastion_records")),
    )
    with op.batch_alter_table("bastion_records", schema=None) as batch_op:
        batch_op.create_index("ix_bastion_records_expires_at", ["expires_at"], unique=False)

    op.create_table(
        "programs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("budget_units", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_programs")),
    )
    op.create_table(
        "wallets",
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("registration_tx", sa.String(length=66), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_wallets")),
    )
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
    )
    op.create_table(
        "claims",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("wallet", sa.String(length=42), nullable=False),
        sa.Column("program_id", sa.String(length=64), nullable=False),
        sa.Column("amount_units", sa.BigInteger(), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("signature", sa.String(length=132), nullable=True),
        sa.Column("prepared_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["program_id"], ["programs.id"], name=op.f("fk_claims_program_id_programs")
        ),
        sa.ForeignKeyConstraint(
            ["wallet"], ["wallets.address"], name=op.f("fk_claims_wallet_wallets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_claims")),
    )
    with op.batch_alter_table("claims", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_claims_program_id"), ["program_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_claims_wallet"), ["wallet"], unique=False)

    op.create_table(
        "payouts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("batch_id", sa.String(length=40), nullable=False),
        sa.Column("row", sa.Integer(), nullable=False),
        sa.Column("program_id", sa.String(length=64), nullable=False),
        sa.Column("wallet", sa.String(length=42), nullable=False),
        sa.Column("amount_units", sa.BigInteger(), nullable=False),
        sa.Column("reference", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["program_id"], ["programs.id"], name=op.f("fk_payouts_program_id_programs")
        ),
        sa.ForeignKeyConstraint(
            ["wallet"], ["wallets.address"], name=op.f("fk_payouts_wallet_wallets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payouts")),
    )
    with op.batch_alter_table("payouts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_payouts_batch_id"), ["batch_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_payouts_program_id"), ["program_id"], unique=False)

    op.create_table(
        "intents",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("type", sa.String(length=6), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("program_id", sa.String(length=64), nullable=False),
        sa.Column("wallet", sa.String(length=42), nullable=False),
        sa.Column("amount_units", sa.BigInteger(), nullable=False),
        sa.Column("claim_id", sa.String(length=40), nullable=True),
        sa.Column("payout_id", sa.String(length=40), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("locked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("tx_hash", sa.String(length=66), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["claim_id"], ["claims.id"], name=op.f("fk_intents_claim_id_claims")
        ),
        sa.ForeignKeyConstraint(
            ["payout_id"], ["payouts.id"], name=op.f("fk_intents_payout_id_payouts")
        ),
        sa.ForeignKeyConstraint(
            ["program_id"], ["programs.id"], name=op.f("fk_intents_program_id_programs")
        ),
        sa.ForeignKeyConstraint(
            ["wallet"], ["wallets.address"], name=op.f("fk_intents_wallet_wallets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_intents")),
        sa.UniqueConstraint("claim_id", name=op.f("uq_intents_claim_id")),
        sa.UniqueConstraint("payout_id", name=op.f("uq_intents_payout_id")),
    )
    with op.batch_alter_table("intents", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_intents_program_id"), ["program_id"], unique=False)
        batch_op.create_index("ix_intents_status_locked_at", ["status", "locked_at"], unique=False)

    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("program_id", sa.String(length=64), nullable=False),
        sa.Column("intent_id", sa.String(length=40), nullable=False),
        sa.Column("account", sa.String(length=80), nullable=False),
        sa.Column("amount_units", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["intent_id"], ["intents.id"], name=op.f("fk_ledger_entries_intent_id_intents")
        ),
        sa.ForeignKeyConstraint(
            ["program_id"], ["programs.id"], name=op.f("fk_ledger_entries_program_id_programs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
    )
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ledger_entries_intent_id"), ["intent_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_ledger_entries_program_id"), ["program_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ledger_entries_program_id"))
        batch_op.drop_index(batch_op.f("ix_ledger_entries_intent_id"))

    op.drop_table("ledger_entries")
    with op.batch_alter_table("intents", schema=None) as batch_op:
        batch_op.drop_index("ix_intents_status_locked_at")
        batch_op.drop_index(batch_op.f("ix_intents_program_id"))

    op.drop_table("intents")
    with op.batch_alter_table("payouts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payouts_program_id"))
        batch_op.drop_index(batch_op.f("ix_payouts_batch_id"))

    op.drop_table("payouts")
    with op.batch_alter_table("claims", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_claims_wallet"))
        batch_op.drop_index(batch_op.f("ix_claims_program_id"))

    op.drop_table("claims")
    op.drop_table("webhook_events")
    op.drop_table("wallets")
    op.drop_table("programs")
    with op.batch_alter_table("bastion_records", schema=None) as batch_op:
        batch_op.drop_index("ix_bastion_records_expires_at")

    op.drop_table("bastion_records")
    with op.batch_alter_table("bastion_buckets", schema=None) as batch_op:
        batch_op.drop_index("ix_bastion_buckets_expires_at")

    op.drop_table("bastion_buckets")
