"""Request and response models: what ``/openapi.json`` and ``/docs`` describe.

Amounts are strings (``"12.5"``), never JSON numbers; wallets are checked against EIP-55
and answered in checksummed form.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from reference_service.amounts import AMOUNT_PATTERN, format_units, to_units
from reference_service.db.models import Claim, Intent
from reference_service.wallets import normalize_address

__all__ = [
    "Amount",
    "ClaimModel",
    "IntentModel",
    "PayoutBatchRequest",
    "PayoutBatchResult",
    "PrepareRequest",
    "PreparedClaim",
    "RecordRequest",
    "RegisterRequest",
    "Registration",
    "V2ClaimRequest",
    "V2ClaimResult",
    "WalletAddress",
]


def _positive(amount: str) -> str:
    if to_units(amount) == 0:
        raise ValueError("the amount must be greater than zero")
    return amount


WalletAddress = Annotated[
    str,
    Field(
        description="0x + 40 hex digits, lower case or EIP-55 checksummed",
        examples=["0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"],
        # documented, not validated by the pattern: normalize_address says what is wrong
        json_schema_extra={"pattern": "^0x[0-9a-fA-F]{40}$"},
    ),
    AfterValidator(normalize_address),
]
Amount = Annotated[
    str,
    Field(
        pattern=AMOUNT_PATTERN,
        description="a decimal string with at most 6 decimals; never a JSON number",
        examples=["12.5"],
    ),
    AfterValidator(_positive),
]
ProgramId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Signature = Annotated[
    str,
    Field(pattern=r"^0x[0-9a-fA-F]{130}$", description="a 65-byte signature, 0x + 130 hex"),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterRequest(Strict):
    wallet: WalletAddress


class Registration(BaseModel):
    wallet: str
    tx_hash: str
    registered_at: datetime


class PrepareRequest(Strict):
    wallet: WalletAddress
    program_id: ProgramId
    amount: Amount


class TransactionModel(BaseModel):
    to: str
    data: str
    chain_id: int
    gas: int
    value: str


class PreparedClaim(BaseModel):
    claim_id: str
    wallet: str
    program_id: str
    amount: str
    nonce: int
    expires_at: datetime
    transactions: list[TransactionModel]


class RecordRequest(Strict):
    wallet: WalletAddress
    claim_id: Annotated[str, StringConstraints(min_length=1, max_length=40)]
    signature: Signature


class IntentModel(BaseModel):
    id: str
    type: str
    status: str
    program_id: str
    wallet: str
    amount: str
    claim_id: str | None
    payout_id: str | None
    attempts: int
    last_error: str | None
    tx_hash: str | None
    created_at: datetime
    settled_at: datetime | None

    @classmethod
    def of(cls, intent: Intent) -> IntentModel:
        return cls(
            id=intent.id,
            type=intent.type,
            status=intent.status,
            program_id=intent.program_id,
            wallet=intent.wallet,
            amount=format_units(intent.amount_units),
            claim_id=intent.claim_id,
            payout_id=intent.payout_id,
            attempts=intent.attempts,
            last_error=intent.last_error,
            tx_hash=intent.tx_hash,
            created_at=intent.created_at,
            settled_at=intent.settled_at,
        )


class ClaimModel(BaseModel):
    id: str
    wallet: str
    program_id: str
    amount: str
    nonce: int
    status: str

    @classmethod
    def of(cls, claim: Claim) -> ClaimModel:
        return cls(
            id=claim.id,
            wallet=claim.wallet,
            program_id=claim.program_id,
            amount=format_units(claim.amount_units),
            nonce=claim.nonce,
            status=claim.status,
        )


class V2ClaimRequest(Strict):
    wallet: WalletAddress
    program_id: ProgramId
    amount: Amount
    signature: Signature


class V2ClaimResult(BaseModel):
    claim: ClaimModel
    intent: IntentModel


class PayoutRow(Strict):
    wallet: WalletAddress
    amount: Amount
    reference: Annotated[str, StringConstraints(max_length=200)] | None = None


class PayoutBatchRequest(Strict):
    program_id: ProgramId
    payouts: Annotated[list[PayoutRow], Field(min_length=1, max_length=500)]


class PayoutResult(BaseModel):
    id: str
    row: int
    wallet: str
    amount: str
    reference: str | None
    intent_id: str


class PayoutBatchResult(BaseModel):
    batch_id: str
    program_id: str
    total: str
    payouts: list[PayoutResult]


class WebhookEventBody(BaseModel):
    id: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    type: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    data: dict[str, Any] = Field(default_factory=dict)


class WebhookDelivery(BaseModel):
    event: WebhookEventBody


class WebhookResult(BaseModel):
    event_id: str
    status: str
    """``processed``, ``ignored`` (a type the service does not act on) or ``duplicate``."""


class DLQJob(BaseModel):
    id: str
    name: str
    original_queue: str
    original_job_id: str | None
    reason: str
    attempts_made: int
    data: dict[str, Any]
    created_at: float


class DLQPage(BaseModel):
    items: list[DLQJob]
    total: int
    offset: int
    limit: int
    next_offset: int | None


class RetryResult(BaseModel):
    retried: str
    queue: str
    job_id: str
    state: str


class Faults(Strict):
    fail_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    hang_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
