"""POST /api/commerce/webhook: HMAC over ``timestamp.body``, tolerance, dedup by event id."""

from __future__ import annotations

import json
from typing import Any

import pytest
from reference_service.webhooks import SIGNATURE_HEADER, sign

from tests.reference_service.conftest import SECRET, Harness
from tests.reference_service.helpers import problem

pytestmark = pytest.mark.anyio


def event(event_id: str = "evt_1", amount: str = "250", **extra: Any) -> bytes:
    data = {"program_id": "demo", "amount": amount}
    body = {"event": {"id": event_id, "type": "payment.succeeded", "data": data, **extra}}
    return json.dumps(body).encode()


async def deliver(harness: Harness, body: bytes, signature: str | None) -> Any:
    headers = {"content-type": "application/json"}
    if signature is not None:
        headers[SIGNATURE_HEADER] = signature
    return await harness.client.post("/api/commerce/webhook", content=body, headers=headers)


async def budget(harness: Harness) -> int:
    async with harness.service.db.read() as repo:
        program = await repo.program("demo")
    assert program is not None
    return program.budget_units


def failures(harness: Harness, reason: str) -> float:
    value = harness.registry.get_sample_value(
        "bastion_service_webhook_verification_failures_total", {"reason": reason}
    )
    return value or 0.0


async def test_a_signed_event_is_applied_once(harness: Harness) -> None:
    """The funding event adds to the budget; its second delivery answers 200 and changes nothing."""
    body = event()
    now = int(harness.clock())
    first = await deliver(harness, body, sign(SECRET, body, now))
    assert first.status_code == 200
    assert first.json() == {"event_id": "evt_1", "status": "processed"}
    assert await budget(harness) == 1250 * 10**6
    again = await deliver(harness, body, sign(SECRET, body, now + 5))
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert await budget(harness) == 1250 * 10**6


async def test_the_webhook_needs_no_idempotency_key(harness: Harness) -> None:
    """Providers send none: the event id deduplicates instead."""
    body = event("evt_nokey")
    response = await deliver(harness, body, sign(SECRET, body, int(harness.clock())))
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("make_signature", "reason"),
    [
        (lambda body, now: None, "missing"),
        (lambda body, now: "v1=abc", "malformed"),
        (lambda body, now: f"t={now},v1=", "mismatch"),
        (lambda body, now: sign("wrong-secret", body, now), "mismatch"),
        (lambda body, now: sign(SECRET, body + b" ", now), "mismatch"),
        (lambda body, now: sign(SECRET, body, now - 301), "stale"),
        (lambda body, now: sign(SECRET, body, now + 301), "stale"),
    ],
    ids=["missing", "malformed", "empty", "forged", "other-body", "old", "future"],
)
async def test_unverified_deliveries_are_refused_and_counted(
    harness: Harness, make_signature: Any, reason: str
) -> None:
    """401 problem with the reason; the failure counter moves; the budget does not."""
    body = event()
    response = await deliver(harness, body, make_signature(body, int(harness.clock())))
    assert problem(response, 401)["reason"] == reason
    assert failures(harness, reason) == 1
    assert await budget(harness) == 1000 * 10**6


async def test_a_timestamp_inside_the_window_is_accepted(harness: Harness) -> None:
    """299 s old is inside the default 300 s tolerance."""
    body = event("evt_window")
    response = await deliver(harness, body, sign(SECRET, body, int(harness.clock()) - 299))
    assert response.status_code == 200


async def test_one_matching_signature_among_several_is_enough(harness: Harness) -> None:
    """During a secret rotation the provider signs twice; either v1 may match."""
    body = event("evt_rotate")
    now = int(harness.clock())
    good = sign(SECRET, body, now).split(",")[1]
    header = f"t={now},v1={'0' * 64},{good}"
    assert (await deliver(harness, body, header)).status_code == 200


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b'{"event": {"type": "payment.succeeded"}}', 422),
        (event(amount="12.5.5"), 422),
        (event(amount=12.5), 422),  # type: ignore[arg-type]
    ],
)
async def test_signed_but_invalid_events_are_problems(
    harness: Harness, body: bytes, status: int
) -> None:
    """A verified body that is not a valid event is a 400/422, and is not recorded."""
    response = await deliver(harness, body, sign(SECRET, body, int(harness.clock())))
    problem(response, status)
    async with harness.service.db.read() as repo:
        assert await repo.webhook_event("evt_1") is None


async def test_unknown_event_types_are_acknowledged_and_ignored(harness: Harness) -> None:
    """200 ``ignored``: the provider stops retrying, and nothing changes."""
    body = json.dumps({"event": {"id": "evt_x", "type": "refund.created"}}).encode()
    response = await deliver(harness, body, sign(SECRET, body, int(harness.clock())))
    assert response.json()["status"] == "ignored"
    assert await budget(harness) == 1000 * 10**6


async def test_funding_an_unknown_program_is_404(harness: Harness) -> None:
    """The event is not recorded, so a corrected delivery can still be applied."""
    body = json.dumps(
        {
            "event": {
                "id": "evt_p",
                "type": "payment.succeeded",
                "data": {"program_id": "zz", "amount": "1"},
            }
        }
    ).encode()
    response = await deliver(harness, body, sign(SECRET, body, int(harness.clock())))
    problem(response, 404)
    async with harness.service.db.read() as repo:
        assert await repo.webhook_event("evt_p") is None
