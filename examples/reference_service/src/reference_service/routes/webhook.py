"""``/api/commerce/webhook``: the payment provider tells us a program was funded.

No ``Idempotency-Key`` here: providers do not send one. The event id is the key instead,
recorded in ``webhook_events`` in the same transaction as the event's effect, so a second
delivery (the provider retries until it sees a 2xx) answers 200 and changes nothing.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from reference_service.amounts import to_units
from reference_service.db.models import WebhookEvent
from reference_service.problems import ProblemError
from reference_service.routes import service_of
from reference_service.routes.claims import problems
from reference_service.schemas import WebhookDelivery, WebhookResult
from reference_service.service import ReferenceService
from reference_service.webhooks import SIGNATURE_HEADER, SignatureError, verify

__all__ = ["FUNDING_EVENT", "router"]

router = APIRouter(tags=["webhooks"])
Service = Annotated[ReferenceService, Depends(service_of)]

FUNDING_EVENT = "payment.succeeded"
"""``data: {"program_id": ..., "amount": "..."}`` adds the amount to the program's budget."""


@router.post(
    "/api/commerce/webhook",
    response_model=WebhookResult,
    responses=problems(401, 404, 422, 429),
    summary="Signed payment-provider events, deduplicated by event id",
)
async def webhook(request: Request, service: Service) -> WebhookResult:
    body = await request.body()
    try:
        verify(
            request.headers.get(SIGNATURE_HEADER),
            body,
            secret=service.settings.webhook_secret,
            tolerance=service.settings.webhook_tolerance_seconds,
            now=service.clock(),
        )
    except SignatureError as exc:
        service.metrics.webhook_failures.labels(exc.reason).inc()
        raise ProblemError(401, "invalid-signature", str(exc), reason=exc.reason) from exc
    try:
        event = WebhookDelivery.model_validate_json(body).event
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from exc
    funding: tuple[str, int] | None = None
    if event.type == FUNDING_EVENT:
        program_id, amount = event.data.get("program_id"), event.data.get("amount")
        try:
            if not isinstance(program_id, str) or not isinstance(amount, str):
                raise ValueError
            funding = (program_id, to_units(amount))
        except ValueError:
            raise ProblemError(
                422,
                "validation",
                f"a {FUNDING_EVENT} event needs data.program_id and data.amount (a decimal string)",
            ) from None
    async with service.db.write() as repo:
        outcome = "processed" if funding else "ignored"
        if funding is not None and await repo.program(funding[0], lock=True) is None:
            raise ProblemError(404, "program-not-found", f"there is no program {funding[0]!r}")
        fresh = await repo.add_webhook_event(
            WebhookEvent(id=event.id, type=event.type, received_at=service.now(), outcome=outcome)
        )
        if not fresh:
            outcome = "duplicate"
        elif funding is not None:
            await repo.add_budget(*funding)
    service.metrics.webhook_events.labels(outcome).inc()
    return WebhookResult(event_id=event.id, status=outcome)
