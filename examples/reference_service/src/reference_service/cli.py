"""``bastion-service``: serve, migrate, worker, tour.

``serve`` runs the HTTP service; in embedded mode on a SQLite file it first migrates that
file (``--no-migrate`` to opt out), so ``python3 dev.py serve`` works on a fresh checkout.
Real mode never migrates by itself: run ``migrate`` as a deployment step. ``worker`` runs
queue workers, which exist only in real mode: embedded mode runs its jobs inside ``serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from reference_service.settings import ServiceSettings, SettingsError

__all__ = ["main"]


async def _migrate(url: str) -> None:
    from reference_service.db.engine import create_engine
    from reference_service.db.migrations import migrate

    engine = create_engine(url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


async def _check(url: str) -> None:
    from reference_service.db.engine import create_engine
    from reference_service.db.migrations import check_migrated

    engine = create_engine(url)
    try:
        await check_migrated(engine)
    finally:
        await engine.dispose()


def _preflight(settings: ServiceSettings) -> bool:
    """Real mode: one line naming the missing server (or migration) and how to fix it."""
    from reference_service.runtime import Unavailable, preflight

    try:
        asyncio.run(preflight(settings))
    except Unavailable as exc:
        print(f"bastion-service: {exc}", file=sys.stderr)
        return False
    return True


def _reachable(settings: ServiceSettings) -> bool:
    """The database answers (migrate's own pre-flight: it must not need a migration)."""
    from sqlalchemy import text

    from reference_service.db.engine import create_engine

    async def ping() -> None:
        engine = create_engine(settings.database_url)
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()

    try:
        asyncio.run(asyncio.wait_for(ping(), 5.0))
    except Exception as exc:
        print(
            f"bastion-service: cannot reach the database at {_shown(settings.database_url)} "
            f"({type(exc).__name__}): start it or set DATABASE_URL",
            file=sys.stderr,
        )
        return False
    return True


def serve_real(settings: ServiceSettings, host: str, port: int, workers: int, queue: int) -> int:
    """API processes (uvicorn workers) and queue-worker processes, stopped together."""
    import os
    import signal
    import subprocess

    import uvicorn

    if not _preflight(settings):
        return 1
    os.environ["BASTION_SERVICE_MODE"] = "real"
    print(
        f"bastion-service: real mode, {workers} API process(es) on http://{host}:{port}, "
        f"{queue} queue worker(s); database {_shown(settings.database_url)}",
        file=sys.stderr,
    )
    children = [
        subprocess.Popen([sys.executable, "-m", "reference_service.cli", "worker"])
        for _ in range(queue)
    ]
    try:
        uvicorn.run(
            "reference_service.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
        )
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            child.wait()
    return 0


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def serve(settings: ServiceSettings, host: str, port: int, migrate: bool) -> int:
    import uvicorn

    from reference_service.app import create_app
    from reference_service.db.migrations import NotMigrated

    if migrate and settings.embedded and settings.is_sqlite:
        asyncio.run(_migrate(settings.database_url))
    try:
        asyncio.run(_check(settings.database_url))
    except NotMigrated as exc:
        print(f"bastion-service: {exc}", file=sys.stderr)
        return 1
    if settings.embedded:
        print(
            f"bastion-service: embedded mode, database {settings.database_url}, "
            "rate limits in memory, jobs in process",
            file=sys.stderr,
        )
    uvicorn.run(create_app(settings), host=host, port=port)
    return 0


def worker(settings: ServiceSettings) -> int:
    if settings.embedded:
        print(
            "bastion-service: no workers in embedded mode: `serve` runs the jobs in process "
            "(set BASTION_SERVICE_MODE=real with Redis and PostgreSQL to run workers)",
            file=sys.stderr,
        )
        return 2
    import logging

    import anyio

    from reference_service.runtime import run_worker

    if not _preflight(settings):
        return 1
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    anyio.run(run_worker, settings)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bastion-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the HTTP service")
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=int, default=8000)
    serve_cmd.add_argument(
        "--mode",
        choices=["embedded", "real"],
        help="embedded (no servers) or real (PostgreSQL, Redis, queue workers); "
        "default: BASTION_SERVICE_MODE or BASTION_MODE, else embedded",
    )
    serve_cmd.add_argument(
        "--workers", type=int, default=1, help="real mode: API processes (uvicorn workers)"
    )
    serve_cmd.add_argument(
        "--queue-workers",
        type=int,
        default=0,
        help="real mode: queue-worker processes to start beside the API (default 0: run "
        "`bastion-service worker` yourself)",
    )
    serve_cmd.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not migrate the embedded SQLite database before serving",
    )
    commands.add_parser("migrate", help="upgrade the database to the latest migration")
    commands.add_parser("worker", help="run queue workers (real mode only)")
    tour_cmd = commands.add_parser("tour", help="drive a running service and narrate")
    tour_cmd.add_argument("url", nargs="?", default="http://127.0.0.1:8000")
    tour_cmd.add_argument("--no-color", action="store_true", help="plain output")
    args = parser.parse_args(argv)
    overrides = {"mode": args.mode} if getattr(args, "mode", None) else {}
    try:
        settings = ServiceSettings.from_env(**overrides)
    except SettingsError as exc:
        print(f"bastion-service: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        if not settings.embedded:
            return serve_real(settings, args.host, args.port, args.workers, args.queue_workers)
        return serve(settings, args.host, args.port, not args.no_migrate)
    if args.command == "migrate":
        if not settings.is_sqlite and not _reachable(settings):
            return 1
        asyncio.run(_migrate(settings.database_url))
        print(f"bastion-service: {settings.database_url} is at the latest migration")
        return 0
    if args.command == "worker":
        return worker(settings)
    from reference_service.tour import run_tour

    return run_tour(args.url, settings, color=False if args.no_color else None)


if __name__ == "__main__":
    sys.exit(main())
