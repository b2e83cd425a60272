"""A concurrency tier holds across processes: 4 uvicorn workers, 5 slots, 50 long requests.

The app (concurrency_app.py) counts the requests inside its handler across every worker; the
highest count it ever saw must not exceed the slots, on real Redis and real PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from tests.integration.harness import STORE_URLS, SharedStore, uvicorn_workers

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

SLOTS = 5
CONCURRENT = 50


@pytest.fixture(params=STORE_URLS)
def shared_store(request: pytest.FixtureRequest) -> Iterator[SharedStore]:
    """A store isolated for this test, for each shared backend."""
    with request.param() as shared:
        yield shared


def _peak(database: Path) -> tuple[int, int]:
    conn = sqlite3.connect(database)
    try:
        now, peak = conn.execute("SELECT now, peak FROM inflight").fetchone()
        return int(now), int(peak)
    finally:
        conn.close()


async def test_50_long_requests_over_4_workers_never_exceed_5_in_flight(
    shared_store: SharedStore, tmp_path: Path
) -> None:
    """50 concurrent requests against 5 slots over 4 processes: at most 5 ever run at once,
    the others get 429, and every slot is given back at the end."""
    database = tmp_path / "inflight.sqlite3"
    conn = sqlite3.connect(database)
    conn.execute("CREATE TABLE inflight (now INTEGER NOT NULL, peak INTEGER NOT NULL)")
    conn.execute("INSERT INTO inflight VALUES (0, 0)")
    conn.commit()
    conn.close()
    env = {**shared_store.env(), "BASTION_INFLIGHT_DB": str(database), "BASTION_SLOTS": str(SLOTS)}
    log = tmp_path / "uvicorn.log"
    statuses: Counter[int] = Counter()
    with uvicorn_workers("tests.integration.concurrency_app:app", env, log) as base_url:
        limits = httpx.Limits(max_connections=CONCURRENT, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:

            async def one() -> None:
                statuses[(await client.post("/slow")).status_code] += 1

            async with anyio.create_task_group() as tg:
                for _ in range(CONCURRENT):
                    tg.start_soon(one)
            after = await client.post("/slow")  # every slot was given back
    now, peak = _peak(database)
    assert set(statuses) <= {200, 429}, (statuses, log.read_text()[-3000:])
    assert 1 <= peak <= SLOTS, (peak, statuses)
    assert statuses[200] >= 1, statuses
    assert statuses[429] >= 1, statuses
    assert now == 0
    assert after.status_code == 200
