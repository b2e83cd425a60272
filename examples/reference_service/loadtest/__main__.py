"""``python -m loadtest register|claim``: start the real stack, load it, audit it.

Run from ``examples/reference_service`` (``python3 dev.py load register`` does). Exit status
0 when every invariant held, 1 when one broke, 2 when the run itself could not happen.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from loadtest.audit import run_audit
from loadtest.clientlog import load_log
from loadtest.stack import ROOT, StackOptions, running_stack

SCENARIOS = {"register": "RegisterUser", "claim": "ClaimUser"}
FULL = {"register": (150, 120.0, 60_000), "claim": (100, 120.0, 60_000)}
SHORT = (8, 20.0, 4_000)
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--short", action="store_true", help="the test suite's version")
    parser.add_argument("--users", type=int, help="peak users (the burst)")
    parser.add_argument("--seconds", type=float, help="length of the ramp")
    parser.add_argument("--max-requests", type=int, help="stop after this many answers")
    parser.add_argument("--addresses", type=int, help="client addresses (register)")
    parser.add_argument("--api-workers", type=int, default=4)
    parser.add_argument("--queue-workers", type=int, default=2)
    parser.add_argument("--fail-rate", type=float, default=0.2, help="relayer sends that fail")
    parser.add_argument("--hang-rate", type=float, default=0.02, help="relayer sends that hang")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("BASTION_TEST_POSTGRES_URL")
        or "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server to create the run's throw-away database on",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BASTION_TEST_REDIS_URL") or "redis://127.0.0.1:6379/0",
        help="a Redis server (the run's keys share a fresh prefix, deleted after)",
    )
    parser.add_argument("--out", type=Path, help="where results go (default build/load/<name>)")
    parser.add_argument("--keep", action="store_true", help="keep the database and Redis keys")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    users, seconds, max_requests = SHORT if args.short else FULL[args.scenario]
    users = args.users or users
    seconds = args.seconds or seconds
    max_requests = args.max_requests or max_requests
    addresses = args.addresses or (150 if args.short else users * 40)
    out = args.out or ROOT / "build" / "load" / args.scenario
    out.mkdir(parents=True, exist_ok=True)
    events_file = out / "events.jsonl"
    events_file.unlink(missing_ok=True)
    options = StackOptions(
        postgres_url=args.postgres_url,
        redis_url=args.redis_url,
        api_workers=args.api_workers,
        queue_workers=args.queue_workers,
        fail_rate=args.fail_rate,
        hang_rate=args.hang_rate,
    )
    register_limit = int(os.environ.get("RL_REGISTER_PER_HOUR") or 5)
    print(
        f"load: {args.scenario}, ramp to {users} users over {seconds:.0f}s, at most "
        f"{max_requests} answers; {args.api_workers} API + {args.queue_workers} queue "
        f"processes; relayer fail {args.fail_rate:.0%} hang {args.hang_rate:.0%}",
        flush=True,
    )
    try:
        with running_stack(options, out, keep=args.keep) as stack:
            print(f"load: service on {stack.url}, log {stack.log}", flush=True)
            command = [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(LOCUSTFILE),
                "--headless",
                "--only-summary",
                "--host",
                stack.url,
                "--stop-timeout",
                "60",
                "--loglevel",
                "WARNING",
                "--events-file",
                str(events_file),
                "--max-requests",
                str(max_requests),
                "--load-seconds",
                str(seconds),
                "--peak-users",
                str(users),
                "--program",
                stack.program,
                "--addresses",
                str(addresses),
                "--seed",
                str(args.seed),
                SCENARIOS[args.scenario],
            ]
            started = time.monotonic()
            locust = subprocess.run(command, cwd=out, timeout=seconds + 300, check=False)
            print(
                f"load: locust finished in {time.monotonic() - started:.0f}s "
                f"(exit {locust.returncode})",
                flush=True,
            )
            if not events_file.exists():
                print("load: locust wrote no events", file=sys.stderr)
                return 2
            audit = run_audit(
                stack,
                load_log(events_file),
                args.scenario,
                register_limit=register_limit,
                plot=out / f"{args.scenario}.png",
            )
            if locust.returncode != 0:
                audit.failures.append(f"locust exited with status {locust.returncode}")
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"load: {exc}", file=sys.stderr)
        return 2
    summary = {
        "scenario": args.scenario,
        "users": users,
        "seconds": seconds,
        "max_requests": max_requests,
        "addresses": addresses,
        "api_workers": args.api_workers,
        "queue_workers": args.queue_workers,
        "fail_rate": args.fail_rate,
        "hang_rate": args.hang_rate,
        "figures": audit.figures,
        "failures": audit.failures,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"load: summary in {out / 'summary.json'}", flush=True)
    return 1 if audit.failures else 0


if __name__ == "__main__":
    sys.exit(main())
