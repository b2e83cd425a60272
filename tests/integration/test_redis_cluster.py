"""Proof on a real 3-master Redis Cluster: exact across processes, and spread over the masters.

One private cluster per test session (tests/integration/redis_cluster.py), the store on its
default options through a ``redis+cluster://`` URL. Four uvicorn workers serve
tests/integration/cross_process_app.py: 200 concurrent requests with one Idempotency-Key run
the handler once with no 5xx, four client processes of 50 concurrent requests at a fixed
window of 60 get exactly 60 answers of 200; and the rate-limit buckets of many clients land on
every master (the distribution is printed).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from bastion.stores import RateLimitHit
from bastion.stores._redis import RedisStore
from tests.integration.harness import (
    SharedStore,
    count_side_effects,
    create_side_effect_table,
    run_client_workers,
    uvicorn_workers,
    window_start_offset,
)
from tests.integration.redis_cluster import Cluster, private_cluster

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.slow, pytest.mark.anyio]

CONCURRENT = 200
LIMIT = 60
WINDOW = 3600
CLIENTS = 300
"""Distinct clients whose buckets the spread test places."""


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One private 3-master cluster for the whole session, torn down afterwards."""
    with private_cluster(tmp_path_factory.mktemp("redis-cluster")) as running:
        yield running


@pytest.fixture
def shared(cluster: Cluster) -> SharedStore:
    """The cluster under a prefix of this test's own, on the store's default options."""
    return SharedStore(cluster.url, {"prefix": f"c{uuid.uuid4().hex[:10]}"})


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


async def test_cluster_same_key_from_200_clients_runs_once(
    cluster: Cluster, shared: SharedStore, tmp_path: Path
) -> None:
    """200 concurrent same-key requests over 4 workers on a cluster: one run, no 5xx."""
    env = _app_env(shared, tmp_path)
    log = tmp_path / "uvicorn.log"
    moved_before = cluster.moved_replies()
    with uvicorn_workers("tests.integration.cross_process_app:app", env, log) as base_url:
        responses: list[httpx.Response] = []
        limits = httpx.Limits(max_connections=CONCURRENT, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:

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
    statuses = Counter(r.status_code for r in responses)
    moved = cluster.moved_replies() - moved_before
    print(f"\ncluster same-key burst: statuses {dict(statuses)}, MOVED replies {moved}")
    assert moved == 0  # the topology never changed, so no call went to the wrong node
    assert count_side_effects(env["BASTION_SIDE_EFFECT_DB"]) == 1
    assert set(statuses) <= {201, 409}, (statuses, log.read_text()[-3000:])
    originals = [
        r for r in responses if r.status_code == 201 and "idempotent-replayed" not in r.headers
    ]
    assert len(originals) == 1
    assert len({r.headers["x-worker-pid"] for r in responses}) > 1


def test_cluster_4x50_clients_against_fixed_window_60_get_exactly_60(
    cluster: Cluster, shared: SharedStore, tmp_path: Path
) -> None:
    """4 client processes x 50 concurrent requests over 4 workers on a cluster: 60 OK, 140 429."""
    env = _app_env(shared, tmp_path)
    log = tmp_path / "uvicorn.log"
    moved_before = cluster.moved_replies()
    with uvicorn_workers("tests.integration.cross_process_app:app", env, log) as base_url:
        results = run_client_workers(base_url, "/limited", processes=4, requests=50)
    statuses = Counter(r["status"] for result in results for r in result)
    moved = cluster.moved_replies() - moved_before
    print(f"\ncluster fixed window of {LIMIT}: statuses {dict(statuses)}, MOVED replies {moved}")
    assert moved == 0
    assert statuses == {200: LIMIT, 429: CONCURRENT - LIMIT}, (statuses, log.read_text()[-3000:])


async def test_cluster_buckets_spread_over_every_master(cluster: Cluster) -> None:
    """Buckets of many clients land on all three masters; one client's tiers share a slot."""
    prefix = f"s{uuid.uuid4().hex[:10]}"
    store = RedisStore.from_url(cluster.url, prefix=prefix)
    before = cluster.keys_per_node()
    try:
        for i in range(CLIENTS):
            principal = f"addr:198.51.{i // 256}.{i % 256}"
            decisions = await store.hit(
                [
                    RateLimitHit(f"burst:{principal}", "fixed_window", 10, 60_000),
                    RateLimitHit(f"daily:{principal}", "sliding_window", 100, 86_400_000),
                    RateLimitHit(f"smooth:{principal}", "gcra", 5, 1_000),
                ]
            )
            assert all(d.allowed for d in decisions)
    finally:
        await store.aclose()
    after = cluster.keys_per_node()
    spread = {port: after[port] - before.get(port, 0) for port in after}
    total = sum(spread.values())
    print(f"\nbucket keys per master (port: keys) for {CLIENTS} clients x 3 tiers: {spread}")
    assert total == 3 * CLIENTS
    assert all(count > 0 for count in spread.values()), spread
    assert all(count % 3 == 0 for count in spread.values())  # a client's 3 tiers stay together
    assert max(spread.values()) < 2 * min(spread.values()), spread
