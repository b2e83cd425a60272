"""The admin API: bearer-token auth, the dead-letter queue, retries, fault injection."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.reference_service.conftest import ADMIN, WALLETS, Harness
from tests.reference_service.helpers import claim, problem, register

pytestmark = pytest.mark.anyio

AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/admin/dlq"),
        ("POST", "/api/admin/dlq/1/retry"),
        ("GET", "/api/admin/relayer/faults"),
        ("PUT", "/api/admin/relayer/faults"),
    ],
)
async def test_admin_routes_need_the_token(harness: Harness, method: str, path: str) -> None:
    """No token or another scheme: 401 with a Bearer challenge; a wrong token: 403."""
    for headers in ({}, {"Authorization": f"Basic {ADMIN}"}, {"Authorization": "Bearer "}):
        response = await harness.client.request(method, path, headers=headers, json={})
        problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
    wrong = {"Authorization": f"Bearer {ADMIN}x"}
    problem(await harness.client.request(method, path, headers=wrong, json={}), 403)
    shorter = {"Authorization": "Bearer test"}
    problem(await harness.client.request(method, path, headers=shorter, json={}), 403)


async def test_the_empty_dlq_and_an_unknown_job(harness: Harness) -> None:
    """An empty page, and 404 for retrying a job that is not there."""
    page = (await harness.client.get("/api/admin/dlq", headers=AUTH)).json()
    assert page == {"items": [], "total": 0, "offset": 0, "limit": 50, "next_offset": None}
    problem(await harness.client.post("/api/admin/dlq/42/retry", headers=AUTH), 404)
    problem(await harness.client.get("/api/admin/dlq?limit=0", headers=AUTH), 422)
    problem(await harness.client.get("/api/admin/dlq?offset=-1", headers=AUTH), 422)


async def test_a_job_failing_five_times_lands_in_the_dlq_and_is_retried(harness: Harness) -> None:
    """Attempts wait 1, 2, 4, 8 s; the fifth failure marks the intent FAILED and dead-letters
    its job with the reason and original queue; the admin retry settles it."""
    await register(harness.client, WALLETS[0])
    harness.chain.fail_rate = 1.0
    intent = await claim(harness.client, WALLETS[0], "2")
    assert await harness.drain() == 1
    for wait in (1, 2, 4, 8):
        harness.clock.advance(wait - 0.001)
        assert await harness.drain() == 0  # not due yet: the backoff holds
        harness.clock.advance(0.001)
        assert await harness.drain() == 1
    failed = (await harness.client.get(f"/api/intents/{intent['id']}")).json()
    assert failed["status"] == "FAILED"
    assert failed["attempts"] == 5
    assert "simulated failure" in failed["last_error"]
    page = (await harness.client.get("/api/admin/dlq", headers=AUTH)).json()
    assert page["total"] == 1
    [dead] = page["items"]
    assert dead["original_queue"] == "intent-queue"
    assert dead["attempts_made"] == 5
    assert "simulated failure" in dead["reason"]
    assert dead["data"] == {"intent_id": intent["id"]}
    assert harness.registry.get_sample_value("bastion_service_dlq_jobs") in (None, 0.0)
    await harness.client.get("/metrics")
    assert harness.registry.get_sample_value("bastion_service_dlq_jobs") == 1

    harness.chain.fail_rate = 0.0
    retried = await harness.client.post(f"/api/admin/dlq/{dead['id']}/retry", headers=AUTH)
    assert retried.status_code == 202
    assert retried.json()["queue"] == "intent-queue"
    assert await harness.drain() == 1
    settled = (await harness.client.get(f"/api/intents/{intent['id']}")).json()
    assert settled["status"] == "SETTLED"
    assert (await harness.client.get("/api/admin/dlq", headers=AUTH)).json()["total"] == 0
    problem(await harness.client.post(f"/api/admin/dlq/{dead['id']}/retry", headers=AUTH), 404)


async def test_a_hung_send_times_out_and_is_retried(harness: Harness) -> None:
    """A send that hangs is cut by the relayer timeout; the intent goes back to PENDING."""
    await register(harness.client, WALLETS[0])
    harness.service.settings = replace(harness.service.settings, relayer_timeout_seconds=0.01)
    harness.chain.hang_rate = 1.0
    intent = await claim(harness.client, WALLETS[0], "2")
    assert await harness.drain() == 1
    pending = (await harness.client.get(f"/api/intents/{intent['id']}")).json()
    assert pending["status"] == "PENDING"
    assert pending["last_error"] == "the relayer timed out"
    harness.chain.hang_rate = 0.0
    harness.clock.advance(1)
    assert await harness.drain() == 1
    settled = (await harness.client.get(f"/api/intents/{intent['id']}")).json()
    assert settled["status"] == "SETTLED"
    assert settled["attempts"] == 2


async def test_the_dlq_is_paginated(harness: Harness) -> None:
    """Three dead jobs, two per page: newest first, with next_offset until the end."""
    for i in range(3):
        await harness.queue.enqueue(
            "dead-letter-queue",
            "settle-claim",
            {"original_queue": "intent-queue", "reason": f"r{i}", "data": {"n": i}},
        )
    first = (await harness.client.get("/api/admin/dlq?limit=2", headers=AUTH)).json()
    assert [item["reason"] for item in first["items"]] == ["r2", "r1"]
    assert first["next_offset"] == 2
    second = (await harness.client.get("/api/admin/dlq?limit=2&offset=2", headers=AUTH)).json()
    assert [item["reason"] for item in second["items"]] == ["r0"]
    assert second["next_offset"] is None


async def test_fault_injection_is_set_through_the_admin_api(harness: Harness) -> None:
    """PUT sets the simulated chain's shares; a sum over 1 or a share over 1 is a 422."""
    put = harness.client.put
    response = await put("/api/admin/relayer/faults", json={"fail_rate": 0.25}, headers=AUTH)
    assert response.json() == {"fail_rate": 0.25, "hang_rate": 0.0}
    assert harness.chain.fail_rate == 0.25
    too_much = {"fail_rate": 0.7, "hang_rate": 0.7}
    problem(await put("/api/admin/relayer/faults", json=too_much, headers=AUTH), 422)
    problem(await put("/api/admin/relayer/faults", json={"fail_rate": 2}, headers=AUTH), 422)
