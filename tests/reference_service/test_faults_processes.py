"""Processes killed with SIGKILL mid-flight, on a private Redis and PostgreSQL: an API
process whose handlers hang in the relayer, and a queue worker whose jobs hang. Afterwards
an audit of the database: nothing duplicated, nothing lost."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.reference_service.faults import Servers, private_servers
from tests.reference_service.helpers import SIGNATURE
from tests.reference_service.real import (
    Real,
    eventually,
    free_port,
    random_wallet,
    real_environ,
    real_settings,
    spawn,
    start_real,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.anyio,
]
LIMITS = {"RL_REGISTER_PER_HOUR": "100000", "RL_CLAIM_PER_HOUR": "100000"}


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    with private_servers(tmp_path) as started:
        yield started


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=60)


async def _scalar(real: Real, sql: str, **params: Any) -> Any:
    async with real.service.db.engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar_one()


async def test_an_api_process_killed_mid_flight_loses_and_duplicates_nothing(
    servers: Servers, tmp_path: Path
) -> None:
    """Registrations hang in the relayer on API process A, claims go through it too; A is
    SIGKILLed. Once A's 2 s leases expire, retries with the same keys on process B complete:
    every wallet registered once, every claim key one claim, replays answer the same."""
    settings = real_settings(servers.database_url, servers.redis.url, "apikill")
    port = free_port()
    env = real_environ(
        settings,
        **LIMITS,
        BASTION_IDEMPOTENCY_LEASE_SECONDS="2",
        BASTION_SERVICE_RELAYER_TIMEOUT_SECONDS="300",
    )
    log = tmp_path / "api.log"
    api = spawn(["serve", "--port", str(port), "--workers", "1", "--queue-workers", "0"], env, log)
    async with start_real(settings, workers=False, environ=LIMITS) as b:
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=300) as a:

                async def up() -> bool:
                    with contextlib.suppress(httpx.TransportError):
                        return (await a.get("/healthz")).status_code == 200
                    return False

                await eventually(up, within=90)
                claimant = random_wallet()
                await b.register(claimant)
                await b.faults(hang_rate=1.0)
                wallets = [random_wallet() for _ in range(5)]
                registrations = {f"reg-{i}": {"wallet": w} for i, w in enumerate(wallets)}
                claims = {
                    f"clm-{i}": {
                        "wallet": claimant,
                        "program_id": b.program,
                        "amount": "1",
                        "signature": SIGNATURE,
                    }
                    for i in range(5)
                }

                async def send(path: str, k: str, body: dict[str, Any]) -> int | None:
                    try:
                        response = await a.post(path, json=body, headers={"Idempotency-Key": k})
                    except httpx.TransportError:
                        return None  # the process died under it
                    return response.status_code

                first = [
                    asyncio.ensure_future(send("/api/register", k, v))
                    for k, v in registrations.items()
                ]
                claimed = await asyncio.gather(
                    *(send("/api/v2/claims", k, v) for k, v in claims.items())
                )
                assert claimed == [202] * 5

                async def all_hanging() -> bool:
                    count = await _scalar(b, "SELECT count(*) FROM bastion_records")
                    return bool(count >= len(registrations) + len(claims) + 1)

                await eventually(all_hanging)
                _kill(api)
                assert await asyncio.gather(*first) == [None] * 5
        finally:
            _kill(api)
        await b.faults()

        async def retried(path: str, k: str, body: dict[str, Any], ok: int) -> dict[str, Any]:
            async def attempt() -> dict[str, Any] | None:
                response = await b.client.post(path, json=body, headers={"Idempotency-Key": k})
                assert response.status_code in (ok, 409), response.text  # 409: lease held
                return response.json() if response.status_code == ok else None

            result: dict[str, Any] = await eventually(attempt, within=60, every=0.2)
            return result

        registered = [await retried("/api/register", k, v, 201) for k, v in registrations.items()]
        recorded = [await retried("/api/v2/claims", k, v, 202) for k, v in claims.items()]
        assert sorted(r["wallet"].lower() for r in registered) == sorted(wallets)
        for wallet in wallets:
            rows = await _scalar(
                b, "SELECT count(*) FROM wallets WHERE lower(address) = :w", w=wallet
            )
            assert rows == 1
        assert len({r["intent"]["id"] for r in recorded}) == 5
        claimant_claims = await _scalar(
            b, "SELECT count(*) FROM claims WHERE lower(wallet) = :w", w=claimant.lower()
        )
        assert claimant_claims == 5
        print(f"\napi SIGKILL: {len(registrations)} hung registrations retried, 5 claims replayed")


async def test_a_worker_killed_mid_job_settles_each_intent_once_or_dead_letters_it(
    servers: Servers, tmp_path: Path
) -> None:
    """Four intents' sends hang in worker 1, which is SIGKILLed; worker 2 takes the stalled
    jobs over: each intent ends SETTLED with exactly one pair of ledger entries, or FAILED
    with none and its job in the DLQ; every program's ledger sums to 0."""
    settings = real_settings(
        servers.database_url,
        servers.redis.url,
        "workerkill",
        job_timeout_seconds=120.0,
        worker_lock_seconds=1.0,
        stalled_check_seconds=0.5,
    )
    env = real_environ(settings)
    async with start_real(settings, workers=False, environ=LIMITS) as real:
        wallet = random_wallet()
        await real.register(wallet)
        await real.faults(hang_rate=1.0)
        first = spawn(["worker"], env, tmp_path / "worker1.log")
        try:
            intents = [await real.claim(wallet) for _ in range(4)]

            async def all_processing() -> bool:
                states = [(await real.intent(i["id"]))["status"] for i in intents]
                return states == ["PROCESSING"] * 4

            await eventually(all_processing)
        finally:
            _kill(first)
        await real.faults()
        second = spawn(["worker"], env, tmp_path / "worker2.log")
        try:

            async def all_final() -> list[dict[str, Any]] | None:
                bodies = [await real.intent(i["id"]) for i in intents]
                done = all(body["status"] in ("SETTLED", "FAILED") for body in bodies)
                return bodies if done else None

            finals: list[dict[str, Any]] = await eventually(all_final, within=120, every=0.2)
        finally:
            second.terminate()
            second.wait(timeout=60)
        dead = {job["data"].get("intent_id") for job in (await real.dlq())["items"]}
        async with real.service.db.read() as repo:
            ledger = await repo.ledger(real.program)
            assert (await repo.ledger_sums())[real.program] == 0
        for body in finals:
            entries = [e for e in ledger if e.intent_id == body["id"]]
            if body["status"] == "SETTLED":
                assert len(entries) == 2, body
                assert await real.service.relayer.lookup(body["tx_hash"]) is not None
            else:
                assert entries == [], body
                assert body["id"] in dead
        settled = sum(body["status"] == "SETTLED" for body in finals)
        print(f"\nworker SIGKILL: 4 intents, {settled} settled once, {4 - settled} in the DLQ")
