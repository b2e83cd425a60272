"""Real mode as separate processes: worker crashes, graceful stops, a burst across processes,
and the one-line refusals when a server is missing."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from reference_service.settings import ProgramSeed

from reference_service import cli
from tests.reference_service.helpers import SIGNATURE, key
from tests.reference_service.real import (
    ADMIN,
    ROOT,
    eventually,
    free_port,
    pg_template,
    pg_url,
    prefix,
    random_wallet,
    real_environ,
    real_settings,
    redis_url,
    spawn,
    start_real,
)

__all__ = ["pg_template", "pg_url", "prefix", "redis_url"]  # fixtures, imported to be found


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.integration
@pytest.mark.anyio
async def test_a_worker_killed_mid_job_loses_nothing(
    pg_url: str, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """SIGKILL while a send hangs: the next worker gets the job back as stalled and the
    intent settles exactly once (two ledger entries, one transfer)."""
    settings = real_settings(
        pg_url,
        redis_url,
        prefix,
        job_timeout_seconds=120.0,
        worker_lock_seconds=1.0,
        stalled_check_seconds=0.5,
    )
    env = real_environ(settings)
    async with start_real(settings, workers=False) as real:
        wallet = random_wallet()
        await real.register(wallet)
        await real.faults(hang_rate=1.0)
        first = spawn(["worker"], env, tmp_path / "worker1.log")
        try:
            intent = await real.claim(wallet)

            async def processing() -> bool:
                return (await real.intent(intent["id"]))["status"] == "PROCESSING"

            await eventually(processing)
        finally:
            first.kill()
            first.wait()
        await real.faults()
        second = spawn(["worker"], env, tmp_path / "worker2.log")
        try:

            async def settled() -> dict[str, Any] | None:
                body = await real.intent(intent["id"])
                return body if body["status"] == "SETTLED" else None

            done = await eventually(settled)
        finally:
            assert _stop(second) == 0, (tmp_path / "worker2.log").read_text()
        assert done["attempts"] == 2
        async with real.service.db.read() as repo:
            entries = [e for e in await repo.ledger(real.program) if e.intent_id == intent["id"]]
            assert (await repo.ledger_sums())[real.program] == 0
        assert len(entries) == 2
        assert await real.service.relayer.lookup(done["tx_hash"]) is not None


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.integration
def test_a_worker_stops_gracefully_on_sigterm(
    pg_url: str, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """SIGTERM: the worker closes its BullMQ workers and exits 0."""
    env = real_environ(real_settings(pg_url, redis_url, prefix))
    log = tmp_path / "worker.log"
    worker = spawn(["worker"], env, log)

    async def started() -> bool:
        return "processing the intent" in log.read_text()

    asyncio.run(eventually(started))
    assert _stop(worker) == 0
    assert "worker: stopped" in log.read_text()


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.integration
@pytest.mark.slow
def test_the_ledger_balances_after_a_burst_across_processes(
    pg_url: str, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """500 concurrent claims on 4 API processes with 2 queue-worker processes: every claim
    settles once, and every program's ledger sums to 0."""
    settings = real_settings(
        pg_url,
        redis_url,
        prefix,
        programs=(ProgramSeed(f"p-{prefix}", Decimal(1_000_000), "Burst"),),
    )
    port = free_port()
    env = real_environ(
        settings,
        RL_REGISTER_PER_HOUR="10000",
        RL_CLAIM_PER_HOUR="10000",
        BASTION_SERVICE_JOB_CONCURRENCY="8",
    )
    log = tmp_path / "stack.log"
    stack = spawn(
        ["serve", "--port", str(port), "--workers", "4", "--queue-workers", "2"], env, log
    )
    base = f"http://127.0.0.1:{port}"
    program = settings.programs[0].id

    async def burst() -> dict[str, Any]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

            async def ready() -> bool:
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(ready, within=90)
            wallets = [random_wallet() for _ in range(20)]

            async def post(path: str, body: dict[str, Any]) -> httpx.Response:
                # a keep-alive connection the server closed as it was reused, or a connection
                # refused while the listen queue overflowed, is a transport error with no
                # answer: retried with the same key, as a client would
                headers = key()
                for _ in range(3):
                    try:
                        return await client.post(path, json=body, headers=headers)
                    except (
                        httpx.ConnectError,
                        httpx.ReadError,
                        httpx.RemoteProtocolError,
                        httpx.WriteError,
                    ):
                        continue
                return await client.post(path, json=body, headers=headers)

            for wallet in wallets:
                registered = await post("/api/register", {"wallet": wallet})
                assert registered.status_code == 201, registered.text

            async def claim(i: int) -> str:
                response = await post(
                    "/api/v2/claims",
                    {
                        "wallet": wallets[i % len(wallets)],
                        "program_id": program,
                        "amount": "1.5",
                        "signature": SIGNATURE,
                    },
                )
                assert response.status_code == 202, response.text
                intent_id: str = response.json()["intent"]["id"]
                return intent_id

            ids = await asyncio.gather(*(claim(i) for i in range(500)))
            assert len(set(ids)) == 500

            async def all_settled() -> str | None:
                text = (await client.get("/metrics")).text
                line = 'bastion_service_intents{status="SETTLED",type="claim"} 500.0'
                return text if line in text else None

            metrics: str = await eventually(all_settled, within=240, every=0.5)
            return {"metrics": metrics}

    try:
        result = asyncio.run(burst())
    except Exception as exc:
        exc.add_note(f"the stack's log ends:\n{log.read_text()[-3000:]}")
        raise
    finally:
        code = _stop(stack)
    assert code == 0, log.read_text()[-3000:]
    assert f'bastion_service_ledger_balance{{program="{program}"}} 0.0' in result["metrics"]

    async def ledger() -> tuple[int, int]:
        from reference_service.db.engine import create_engine
        from reference_service.db.repository import Database, pool_account

        engine = create_engine(settings.database_url)
        try:
            async with Database(engine).read() as repo:
                entries = await repo.ledger(program)
        finally:
            await engine.dispose()
        pool = [e for e in entries if e.account == pool_account(program)]
        return len(entries), -sum(e.amount_units for e in pool)

    count, paid = asyncio.run(ledger())
    assert count == 1000
    assert paid == 500 * 1_500_000


def test_real_mode_without_postgres_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No PostgreSQL where DATABASE_URL points: one line naming it and how to start it."""
    port = free_port()
    monkeypatch.setenv("BASTION_MODE", "real")
    monkeypatch.setenv("DATABASE_URL", f"postgresql+asyncpg://postgres@127.0.0.1:{port}/x")
    monkeypatch.setenv("BASTION_SERVICE_ADMIN_TOKEN", ADMIN)
    monkeypatch.setenv("BASTION_SERVICE_WEBHOOK_SECRET", "whsec_x")
    for command in (["worker"], ["serve"]):
        assert cli.main(command) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith("bastion-service: cannot reach PostgreSQL")
        assert "start it" in err


@pytest.mark.postgres
def test_real_mode_without_redis_is_one_line(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """PostgreSQL up and migrated, no Redis at REDIS_URL: one line naming Redis."""
    monkeypatch.setenv("BASTION_SERVICE_MODE", "real")
    monkeypatch.setenv("DATABASE_URL", pg_url)
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("BASTION_SERVICE_ADMIN_TOKEN", ADMIN)
    monkeypatch.setenv("BASTION_SERVICE_WEBHOOK_SECRET", "whsec_x")
    assert cli.main(["worker"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("bastion-service: cannot reach Redis at redis://127.0.0.1:")


def test_the_console_script_never_prints_a_traceback(tmp_path: Path) -> None:
    """The real CLI process, not just main(): exit 1 and one line, no traceback."""
    env = real_environ(
        real_settings(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x", "redis://x", "p")
    )
    done = subprocess.run(
        [sys.executable, "-m", "reference_service.cli", "worker"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1
