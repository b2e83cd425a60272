"""``/api/v2/claims`` (prepare and record in one call) and ``/api/v2/payouts/batch``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import JSONResponse, Response

from bastion.idempotency import transaction
from reference_service.amounts import format_units, to_units
from reference_service.db.models import ClaimStatus, Intent, IntentType, Payout
from reference_service.db.repository import Database, new_id
from reference_service.problems import ProblemError
from reference_service.routes import service_of
from reference_service.routes.claims import budget_left, open_claim, problems
from reference_service.schemas import (
    ClaimModel,
    IntentModel,
    PayoutBatchRequest,
    PayoutBatchResult,
    PayoutResult,
    V2ClaimRequest,
    V2ClaimResult,
)
from reference_service.service import ReferenceService

__all__ = ["router"]

router = APIRouter(tags=["v2"])
Service = Annotated[ReferenceService, Depends(service_of)]


@router.post(
    "/api/v2/claims",
    status_code=202,
    response_model=V2ClaimResult,
    responses=problems(400, 404, 409, 422),
    summary="Claim an amount with a signature, in one call",
)
async def claim_v2(body: V2ClaimRequest, request: Request, service: Service) -> Response:
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
                status=ClaimStatus.RECORDED.value,
                signature=body.signature,
                recorded_at=now,
            )
            intent = await repo.add_intent(
                type=IntentType.CLAIM,
                program_id=claim.program_id,
                wallet=body.wallet,
                amount_units=units,
                claim_id=claim.id,
                now=now,
            )
        result = V2ClaimResult(claim=ClaimModel.of(claim), intent=IntentModel.of(intent))
        response = JSONResponse(result.model_dump(mode="json"), status_code=202)
        sent = await db_tx.complete(response)
    if sent is response:
        await service.enqueue_committed(intent.id, intent.type)
    return sent


@router.post(
    "/api/v2/payouts/batch",
    status_code=202,
    response_model=PayoutBatchResult,
    responses=problems(400, 404, 409, 422),
    summary="Pay many wallets from a program, all or nothing",
)
async def payouts_batch(body: PayoutBatchRequest, request: Request, service: Service) -> Response:
    rows = [(i, row, to_units(row.amount)) for i, row in enumerate(body.payouts)]
    total = sum(units for _, _, units in rows)
    now = service.now()
    batch_id = new_id("bat")
    intents: list[Intent] = []
    async with transaction(service.idempotency_store, request) as db_tx:
        async with Database.on(db_tx.connection) as repo:
            program = await repo.program(body.program_id, lock=True)
            if program is None:
                raise ProblemError(
                    404, "program-not-found", f"there is no program {body.program_id!r}"
                )
            known = await repo.registered(row.wallet for row in body.payouts)
            for i, row, _ in rows:
                if row.wallet not in known:
                    raise ProblemError(
                        422,
                        "wallet-not-registered",
                        f"row {i}: wallet {row.wallet} is not registered, so the batch was "
                        "rejected; nothing was paid",
                        row=i,
                    )
            await budget_left(repo, program, total)
            payouts = [
                Payout(
                    id=new_id("pay"),
                    batch_id=batch_id,
                    row=i,
                    program_id=program.id,
                    wallet=row.wallet,
                    amount_units=units,
                    reference=row.reference,
                    created_at=now,
                )
                for i, row, units in rows
            ]
            await repo.add_payouts(payouts)
            for payout in payouts:
                intents.append(
                    await repo.add_intent(
                        type=IntentType.PAYOUT,
                        program_id=program.id,
                        wallet=payout.wallet,
                        amount_units=payout.amount_units,
                        payout_id=payout.id,
                        now=now,
                    )
                )
        result = PayoutBatchResult(
            batch_id=batch_id,
            program_id=body.program_id,
            total=format_units(total),
            payouts=[
                PayoutResult(
                    id=payout.id,
                    row=payout.row,
                    wallet=payout.wallet,
                    amount=format_units(payout.amount_units),
                    reference=payout.reference,
                    intent_id=intent.id,
                )
                for payout, intent in zip(payouts, intents, strict=True)
            ],
        )
        response = JSONResponse(result.model_dump(mode="json"), status_code=202)
        sent = await db_tx.complete(response)
    if sent is response:
        for intent in intents:
            await service.enqueue_committed(intent.id, intent.type)
    return sent
