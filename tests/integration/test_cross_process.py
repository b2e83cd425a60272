"""Proof across processes: several OS processes share one store and still agree.

Four uvicorn workers serve one app (tests/integration/cross_process_app.py); 200 concurrent
requests with one Idempotency-Key run its side effect exactly once, and four client processes
of 50 concurrent requests each at its fixed-window tier of 60 get exactly 60 answers of 200
and 140 of 429. Below HTTP, four processes firing 50 concurrent hits each at one bucket of
limit 60 through the store alone get exactly 60 allowed. Each runs once per shared store in
``harness.STORE_URLS`` (real Redis, PostgreSQL and MariaDB).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from tests.integration import hit_worker
from tests.integration.harness import (
    STORE_URLS,
    SharedStore,
    count_side_effects,
    create_side_effect_table,
    run_client_workers,
    run_hit_workers,
    uvicorn_workers,
    window_start_offset,
)

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

CONCURRENT = 200
CLIENT_PROCESSES = 4
REQUESTS_PER_CLIENT = 50
LIMIT = 60
WINDOW = 3600
"""The tier on cross_process_app's ``POST /limited``: a fixed window far longer than a run."""


@pytest.fixture(params=STORE_URLS)
def shared_store(request: pytest.FixtureRequest) -> Iterator[SharedStore]:
    """A store isolated for this test, for each shared backend."""
    with request.param() as shared:
        yield shared


def _app_env(shared: SharedStore, tmp_path: Path) -> dict[str, str]:
    database = str(tmp_path / "side_effects.sqlite3")
    create_side_effect_table(database)
    return {
        **shared.env(),
        "BASTION_SIDE_EFFECT_DB": database,
        "BASTION_RATE_LIMIT": str(LIMIT),
        "BASTION_RATE_WINDOW": str(WINDOW),
        "BASTION_CLOCK_OFFSET": repr(window_start_offset(WINDOW)),
    }


def _remaining(field: str) -> int:
    """``r`` of a ``RateLimit`` field such as ``"limited";r=37;t=42``."""
    match = re.search(r";r=(\d+)", field)
    assert match is not None, field
    return int(match.group(1))


async def test_same_key_from_200_clients_runs_once_across_4_workers(
    shared_store: SharedStore, tmp_path: Path
) -> None:
    """200 concurrent same-key requests over 4 processes: one side effect, the rest 409/replay."""
    env = _app_env(shared_store, tmp_path)
    database = env["BASTION_SIDE_EFFECT_DB"]
    log = tmp_path / "uvicorn.log"
    with uvicorn_workers("tests.integration.cross_process_app:app", env, log) as base_url:
        responses: list[httpx.Response] = []
        limits = httpx.Limits(max_connections=CONCURRENT, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:

            async def one() -> None:
                response = await client.post(
                    "/orders",
                    content=b'{"sku": "A-1", "qty": 2}',
                    headers={"Idempotency-Key": "order-42"},
                )
                responses.append(response)

            async with anyio.create_task_group() as tg:
                for _ in range(CONCURRENT):
                    tg.start_soon(one)

    assert count_side_effects(database) == 1
    statuses = sorted({r.status_code for r in responses})
    assert set(statuses) <= {201, 409}, (statuses, log.read_text()[-3000:])
    created = [r for r in responses if r.status_code == 201]
    originals = [r for r in created if "idempotent-replayed" not in r.headers]
    assert len(originals) == 1
    assert {r.content for r in created} == {originals[0].content}
    assert all(r.headers["idempotent-replayed"] == "true" for r in created if r not in originals)
    assert len({r.headers["x-worker-pid"] for r in responses}) > 1  # several processes answered


def test_4x50_clients_against_fixed_window_60_get_exactly_60(
    shared_store: SharedStore, tmp_path: Path
) -> None:
    """4 client processes x 50 concurrent requests over 4 workers at limit 60: 60 OK, 140 429."""
    env = _app_env(shared_store, tmp_path)
    log = tmp_path / "uvicorn.log"
    with uvicorn_workers("tests.integration.cross_process_app:app", env, log) as base_url:
        results = run_client_workers(
            base_url, "/limited", processes=CLIENT_PROCESSES, requests=REQUESTS_PER_CLIENT
        )
    responses = [response for result in results for response in result]
    statuses = Counter(r["status"] for r in responses)
    assert statuses == {200: LIMIT, 429: CONCURRENT - LIMIT}, (statuses, log.read_text()[-3000:])
    denied = [r for r in responses if r["status"] == 429]
    assert {r["content_type"] for r in denied} == {"application/problem+json"}
    assert all(int(r["retry_after"]) >= 1 for r in denied)
    assert {r["problem"]["status"] for r in denied} == {429}
    assert all(r["problem"]["violated-policies"] == ["limited"] for r in denied)
    remaining = sorted(_remaining(r["ratelimit"]) for r in responses if r["status"] == 200)
    assert remaining == list(range(LIMIT))  # each allowed request was counted exactly once
    assert len({r["pid"] for r in responses}) > 1  # several worker processes decided


def test_4_processes_of_50_hits_get_exactly_the_limit(shared_store: SharedStore) -> None:
    """Four processes each firing 50 concurrent hits at one fixed window of 60: 60 allowed."""
    results = run_hit_workers(shared_store, "shared-bucket", processes=4, hits=50)
    assert [r["hits"] for r in results] == [50, 50, 50, 50]
    assert sum(r["allowed"] for r in results) == hit_worker.LIMIT
    assert len({r["pid"] for r in results}) == 4
