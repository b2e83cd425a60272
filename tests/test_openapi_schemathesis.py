"""schemathesis validates a running app's answers, bastion's own included, against the schema
`bastion.fastapi.document` produced: generated requests, then a replay, a 409, a 422 and a
429 made on purpose."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bastion.testing import FakeClock
from tests.test_openapi import make_app

pytestmark = pytest.mark.anyio

CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
"""Conformance only: the app's own choices (which valid bodies it accepts) are not at issue."""


def test_generated_requests_get_documented_answers() -> None:
    """Whatever schemathesis sends to each operation, the answer (the handler's, a 400 for a
    bad key, a 429 once the fake clock's window is spent) matches the schema: status, content
    type, headers and body."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", make_app(FakeClock()))
    statuses: set[int] = set()
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            statuses.add(case.call_and_validate(checks=CHECKS).status_code)

        run()
    assert {200, 201, 429} <= statuses


def _validate(schema: Any, path: str, method: str, response: httpx.Response, **case: Any) -> None:
    schema[path][method].Case(**case).validate_response(response, checks=CHECKS)


async def test_replay_conflict_mismatch_and_limit_match_the_schema() -> None:
    """A replay, an in-flight 409 with Retry-After, a 422 for another body and a 429 with the
    rate-limit fields all conform to the documented responses of ``POST /pay``."""
    gate: dict[str, anyio.Event] = {}
    app = make_app(FakeClock(), gate)
    schema = schemathesis.openapi.from_dict(app.openapi())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        key = {"Idempotency-Key": '"order-1"'}
        first = await client.post("/pay", json={"a": 1}, headers=key)
        replay = await client.post("/pay", json={"a": 1}, headers={"Idempotency-Key": "order-1"})
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.content == first.content
        other = await client.post("/pay", json={"a": 2}, headers=key)
        assert other.status_code == 422

        gate.update(entered=anyio.Event(), release=anyio.Event())
        slow_key = {"Idempotency-Key": "order-2"}
        answers: list[httpx.Response] = []
        async with anyio.create_task_group() as tg:

            async def slow() -> None:
                try:
                    answers.append(await client.post("/pay", json={"a": 3}, headers=slow_key))
                finally:
                    gate["entered"].set()  # also when the handler never ran

            tg.start_soon(slow)
            await gate["entered"].wait()
            conflict = await client.post("/pay", json={"a": 3}, headers=slow_key)
            gate["release"].set()
        assert conflict.status_code == 409
        assert "retry-after" in conflict.headers
        gate.clear()

        # the replay, the 422 and the 409 cost no quota: 3 of the tier's 5 are left
        fresh = [
            await client.post("/pay", json={"a": 4}, headers={"Idempotency-Key": f"o-{n}"})
            for n in range(5)
        ]
        assert [r.status_code for r in fresh] == [201, 201, 201, 429, 429]
        limited = fresh[3]
        assert "ratelimit" in limited.headers

    for response, body in [
        (first, {"a": 1}),
        (replay, {"a": 1}),
        (other, {"a": 2}),
        (conflict, {"a": 3}),
        (answers[0], {"a": 3}),
        (limited, {"a": 4}),
    ]:
        _validate(
            schema, "/pay", "POST", response, body=body, headers=dict(response.request.headers)
        )


async def test_an_undocumented_answer_fails_validation() -> None:
    """The same 429, checked against the schema FastAPI made without `document`, fails: the
    validation above has teeth."""
    app = make_app(FakeClock(), documented=False)
    bare = schemathesis.openapi.from_dict(app.openapi())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        for n in range(6):
            limited = await client.post("/pay", json={"a": n}, headers={"Idempotency-Key": f"{n}"})
    assert limited.status_code == 429
    with pytest.raises(FailureGroup, match="Undocumented status code"):
        _validate(bare, "/pay", "POST", limited, body={"a": 5})
