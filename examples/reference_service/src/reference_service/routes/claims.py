"""``/api/register``, ``/api/claim/prepare``, ``/api/claim/record`` and intent look-ups.

Every write runs in ``SQLStore.transaction``: the handler's rows and the response bastion
stores for its ``Idempotency-Key`` commit together, so a crash can never leave a recorded
claim whose retry records it again. Jobs are enqueued only after that commit (the
reconciler re-enqueues any intent a crash left PENDING without a job).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Request
from sqlalchemy.exc import IntegrityError
from starlette.responses import JSONResponse, Response

from bastion.idempotency import transaction
from reference_service.amounts import format_units, to_units
from reference_service.db.models import Claim, ClaimStatus, IntentType, Program
from reference_service.db.repository import Database, Repository, new_id
from reference_service.problems import PROBLEM, ProblemError
from reference_service.relayer import (
    DISTRIBUTOR,
    REGISTRY,
    Receipt,
    RelayerError,
    Transaction,
    encode_call,
)
from reference_service.routes import service_of
from reference_service.schemas import (
    IntentModel,
    PreparedClaim,
    PrepareRequest,
    RecordRequest,
    RegisterRequest,
    Registration,
)
from reference_service.service import ReferenceService

__all__ = ["budget_left", "relay", "router"]

router = APIRouter(tags=["claims"])
Service = Annotated[ReferenceService, Depends(service_of)]


def problems(*statuses: int) -> dict[int | str, dict[str, object]]:
    return {
        status: {"content": {PROBLEM: {}}, "description": "problem+json"} for status in statuses
    }


async def relay(service: ReferenceService, tx: Transaction) -> Receipt:
    """Send through the relayer, bounded by its timeout; a failure is a 503 to retry."""
    try:
        with anyio.fail_after(service.settings.relayer_timeout_seconds):
            return await service.relayer.send(tx)
    except (RelayerError, TimeoutError) as exc:
        detail = "the relayer timed out" if isinstance(exc, TimeoutError) else str(exc)
        raise ProblemError(
            503, "relayer-unavailable", f"{detail}; retry later", headers={"retry-after": "5"}
        ) from exc


async def wallet_and_program(repo: Repository, wallet: str, program_id: str) -> Program:
    if await repo.wallet(wallet) is None:
        raise ProblemError(404, "wallet-not-registered", f"wallet {wallet} is not registered")
    program = await repo.program(program_id, lock=True)
    if program is None:
        raise ProblemError(404, "program-not-found", f"there is no program {program_id!r}")
    return program


async def budget_left(repo: Repository, program: Program, units: int) -> None:
    """Refuse ``units`` beyond what the program has not promised yet (409)."""
    remaining = program.budget_units - await repo.committed_units(program.id)
    if units > remaining:
        raise ProblemError(
            409,
            "over-budget",
            f"program {program.id!r} has {format_units(remaining)} left, less than "
            f"{format_units(units)}",
            remaining=format_units(max(remaining, 0)),
        )


async def open_claim(
    repo: Repository,
    service: ReferenceService,
    wallet: str,
    program_id: str,
    units: int,
    now: datetime,
    **fields: Any,
) -> Claim:
    """Add a claim of ``units`` once the wallet, the program and its budget allow it."""
    program = await wallet_and_program(repo, wallet, program_id)
    await budget_left(repo, program, units)
    return await repo.add_claim(
        Claim(
            id=new_id("clm"),
            wallet=wallet,
            program_id=program.id,
            amount_units=units,
            nonce=await repo.next_nonce(wallet),
            prepared_at=now,
            expires_at=now + timedelta(seconds=service.settings.prepared_claim_ttl_seconds),
            **fields,
        )
    )


@router.post(
    "/api/register",
    status_code=201,
    response_model=Registration,
    responses=problems(400, 409, 422, 429, 503),
    summary="Register a wallet through the relayer",
)
async def register(body: RegisterRequest, request: Request, service: Service) -> Response:
    async with service.db.read() as repo:
        if await repo.wallet(body.wallet) is not None:
            raise ProblemError(409, "already-registered", f"{body.wallet} is already registered")
    tx = Transaction(
        to=REGISTRY,
        data=encode_call("register(address)", body.wallet),
        chain_id=service.relayer.chain_id,
    )
    receipt = await relay(service, tx)
    try:
        async with transaction(service.idempotency_store, request) as db_tx:
            async with Database.on(db_tx.connection) as repo:
                wallet = await repo.add_wallet(body.wallet, receipt.tx_hash, service.now())
            registration = Registration(
                wallet=wallet.address, tx_hash=receipt.tx_hash, registered_at=wallet.registered_at
            )
            return await db_tx.complete(
                JSONResponse(registration.model_dump(mode="json"), status_code=201)
            )
    except IntegrityError as exc:  # registered concurrently under another key
        raise ProblemError(
            409, "already-registered", f"{body.wallet} is already registered"
        ) from exc


@router.post(
    "/api/claim/prepare",
    response_model=PreparedClaim,
    responses=problems(400, 404, 409, 422, 429),
    summary="The transactions a wallet signs to claim an amount",
)
async def prepare(body: PrepareRequest, request: Request, service: Service) -> Response:
    units = to_units(body.amount)
    now = service.now()
    async with transaction(service.idempotency_store, request) as db_tx:
        async with Database.on(db_tx.connection) as repo:
            claim = await open_claim(
                repo,
                service,
                body.wallet,
                body.program_id,
                units,
                now,
                status=ClaimStatus.PREPARED.value,
            )
        tx = Transaction(
            to=DISTRIBUTOR,
            data=encode_call(
                "claim(bytes32,bytes32,address,uint256,uint256)",
                claim.program_id,
                claim.id,
                claim.wallet,
                claim.amount_units,
                claim.nonce,
            ),
            chain_id=service.relayer.chain_id,
        )
        prepared = PreparedClaim(
            claim_id=claim.id,
            wallet=claim.wallet,
            program_id=claim.program_id,
            amount=format_units(units),
            nonce=claim.nonce,
            expires_at=claim.expires_at,
            transactions=[tx.as_json()],  # type: ignore[list-item]
        )
        return await db_tx.complete(JSONResponse(prepared.model_dump(mode="json")))


@router.post(
    "/api/claim/record",
    status_code=202,
    response_model=IntentModel,
    responses=problems(400, 404, 409, 422, 429),
    summary="Record a signed claim and enqueue its intent",
)
async def record(body: RecordRequest, request: Request, service: Service) -> Response:
    now = service.now()
    async with transaction(service.idempotency_store, request) as db_tx:
        async with Database.on(db_tx.connection) as repo:
            claim = await repo.claim(body.claim_id, lock=True)
            if claim is None or claim.wallet != body.wallet:
                raise ProblemError(
                    404, "claim-not-found", f"wallet {body.wallet} has no claim {body.claim_id!r}"
                )
            if claim.status != ClaimStatus.PREPARED.value:
                raise ProblemError(
                    409, "claim-already-recorded", f"claim {claim.id} is already {claim.status}"
                )
            if claim.expires_at <= now:
                raise ProblemError(
                    409, "claim-expired", f"claim {claim.id} expired; prepare it again"
                )
            program = await repo.program(claim.program_id, lock=True)
            assert program is not None  # a foreign key
            await budget_left(repo, program, claim.amount_units)
            claim.status = ClaimStatus.RECORDED.value
            claim.signature = body.signature
            claim.recorded_at = now
            intent = await repo.add_intent(
                type=IntentType.CLAIM,
                program_id=claim.program_id,
                wallet=claim.wallet,
                amount_units=claim.amount_units,
                claim_id=claim.id,
                now=now,
            )
        response = JSONResponse(IntentModel.of(intent).model_dump(mode="json"), status_code=202)
        sent = await db_tx.complete(response)
    if sent is response:
        await service.enqueue_committed(intent.id, intent.type)
    return sent


@router.get(
    "/api/intents/{intent_id}",
    response_model=IntentModel,
    responses=problems(404),
    summary="An intent and where its settlement stands",
)
async def get_intent(intent_id: str, service: Service) -> IntentModel:
    async with service.db.read() as repo:
        intent = await repo.intent(intent_id)
    if intent is None:
        raise ProblemError(404, "intent-not-found", f"there is no intent {intent_id!r}")
    return IntentModel.of(intent)
