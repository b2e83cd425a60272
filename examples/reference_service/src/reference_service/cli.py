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
    print("bastion-service: the real mode's workers are not part of this build", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bastion-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the HTTP service")
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=int, default=8000)
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
    try:
        settings = ServiceSettings.from_env()
    except SettingsError as exc:
        print(f"bastion-service: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return serve(settings, args.host, args.port, not args.no_migrate)
    if args.command == "migrate":
        asyncio.run(_migrate(settings.database_url))
        print(f"bastion-service: {settings.database_url} is at the latest migration")
        return 0
    if args.command == "worker":
        return worker(settings)
    from reference_service.tour import run_tour

    return run_tour(args.url, settings, color=False if args.no_color else None)


if __name__ == "__main__":
    sys.exit(main())
