"""Real mode's processes: the pre-flight check of its servers, and the queue worker.

`preflight` turns a missing PostgreSQL, Redis or migration into one line that says which and
how to fix it (the CLI prints it and exits non-zero), so an operator never reads a
traceback to learn that a server is down. `run_worker` is ``bastion-service worker``:
BullMQ workers for the intent, payout and reconciler queues, the sweeper and reconciler
schedules, and a graceful stop on SIGTERM (finish the active jobs, each bounded by the
per-job timeout; anything killed harder is redelivered by BullMQ's stalled check).
"""

from __future__ import annotations

import logging
import signal

import anyio
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.engine import make_url

from reference_service.db.engine import create_engine
from reference_service.db.migrations import NotMigrated, check_migrated
from reference_service.settings import ServiceSettings

__all__ = ["Unavailable", "preflight", "run_worker"]

logger = logging.getLogger("reference_service.worker")
CONNECT_TIMEOUT = 5.0


class Unavailable(RuntimeError):
    """A server real mode needs is not there; the message is the one-line hint."""


def _shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _redis_shown(url: str) -> str:
    head, _, tail = url.rpartition("@")
    return f"{url.split('://', 1)[0]}://***@{tail}" if head else url


async def preflight(settings: ServiceSettings) -> None:
    """Raise `Unavailable` unless PostgreSQL answers, is migrated, and Redis answers."""
    engine = create_engine(settings.database_url)
    try:
        with anyio.fail_after(CONNECT_TIMEOUT):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            await check_migrated(engine)
    except NotMigrated as exc:
        raise Unavailable(str(exc)) from None
    except Exception as exc:
        where = _shown(settings.database_url)
        if "does not exist" in str(exc):
            database = make_url(settings.database_url).database
            raise Unavailable(
                f"the database {database!r} does not exist on {where}: create it "
                f"(`createdb -h HOST -U USER {database}`), then run `bastion-service migrate`"
            ) from None
        raise Unavailable(
            f"cannot reach PostgreSQL at {where} ({type(exc).__name__}): start it "
            "(`pg_ctlcluster <version> main start`, or `docker compose -f "
            "examples/reference_service/ops/docker-compose.yml up -d postgres`) or set DATABASE_URL"
        ) from None
    finally:
        await engine.dispose()
    from redis.asyncio import Redis

    client = Redis.from_url(
        settings.redis_url, socket_timeout=CONNECT_TIMEOUT, socket_connect_timeout=CONNECT_TIMEOUT
    )
    try:
        await client.ping()
    except Exception as exc:
        raise Unavailable(
            f"cannot reach Redis at {_redis_shown(settings.redis_url)} ({type(exc).__name__}): "
            "start it (`redis-server --daemonize yes`, or `docker compose -f "
            "examples/reference_service/ops/docker-compose.yml up -d redis`) or set REDIS_URL"
        ) from None
    finally:
        await client.aclose()


async def run_worker(settings: ServiceSettings, *, stop: anyio.Event | None = None) -> None:
    """Run queue workers until ``stop`` is set, or SIGTERM/SIGINT arrives."""
    from reference_service.jobs.bull import BullQueue, QueueWorkers
    from reference_service.service import ReferenceService

    stop = stop or anyio.Event()
    service = ReferenceService(
        settings, engine=create_engine(settings.database_url), registry=CollectorRegistry()
    )
    assert isinstance(service.queue, BullQueue)
    workers = QueueWorkers(
        service.queue,
        lock_seconds=settings.worker_lock_seconds,
        stalled_check_seconds=settings.stalled_check_seconds,
    )
    service.register_handlers(workers)
    try:
        async with anyio.create_task_group() as tg:

            async def on_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        logger.info("worker: %s, finishing the active jobs", signum.name)
                        stop.set()
                        return

            tg.start_soon(on_signals)
            await workers.start(service.schedules())
            logger.info("worker: processing the intent, payout and reconciler queues")
            await stop.wait()
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await workers.close()
            await service.aclose()
    logger.info("worker: stopped")
