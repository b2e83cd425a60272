"""``bastion check URL``: the conformance kit from a shell; exits 1 when a check fails."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

import anyio
import httpx

from bastion.check import CHECKS, Report, Target, run_checks
from bastion.check._target import parse_header

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bastion",
        description="Check that a running service keeps bastion's idempotency and rate-limit "
        "promises.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="run the conformance checks against a service")
    check.add_argument("url", help="the service's base URL, e.g. http://127.0.0.1:8000")
    check.add_argument("--app", help="check an ASGI app in-process (module:attribute) instead")
    check.add_argument("--method", default="POST")
    check.add_argument("--path", default="/", help="the idempotent route to drive")
    check.add_argument(
        "--body",
        default=Target.body,
        help="request body template: ${nonce} is 40 fresh hex digits per payload, ${n} a count",
    )
    check.add_argument("--content-type", default=Target.content_type)
    check.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    check.add_argument(
        "--principal-a", action="append", default=[], help="'Name: value' of tenant A"
    )
    check.add_argument(
        "--principal-b", action="append", default=[], help="'Name: value' of tenant B"
    )
    check.add_argument("--key-header", default=Target.key_header)
    check.add_argument("--require-key", action="store_true", help="a keyless request gets 400")
    check.add_argument("--concurrency", type=int, default=Target.concurrency)
    check.add_argument("--limit-method", help="the rate-limited request (default: --method)")
    check.add_argument("--limit-path", help="the rate-limited route (default: --path)")
    check.add_argument("--max-requests", type=int, default=Target.max_requests)
    check.add_argument("--max-wait", type=float, default=Target.max_wait)
    check.add_argument(
        "--only",
        action="append",
        default=[],
        help=f"a check or group to run (repeatable): idempotency, ratelimit, {', '.join(CHECKS)}",
    )
    check.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    return parser


def _headers(values: list[str]) -> dict[str, str]:
    return dict(parse_header(value) for value in values)


def _target(args: argparse.Namespace) -> Target:
    options: dict[str, Any] = {
        "method": args.method.upper(),
        "path": args.path,
        "body": args.body,
        "content_type": args.content_type,
        "headers": _headers(args.header),
        "key_header": args.key_header,
        "require_key": args.require_key,
        "concurrency": args.concurrency,
        "limit_method": args.limit_method,
        "limit_path": args.limit_path,
        "max_requests": args.max_requests,
        "max_wait": args.max_wait,
    }
    if args.principal_a:
        options["principal_a"] = _headers(args.principal_a)
    if args.principal_b:
        options["principal_b"] = _headers(args.principal_b)
    return Target(**options)


def _load_app(spec: str) -> Any:
    module, _, attribute = spec.partition(":")
    app = importlib.import_module(module)
    for part in (attribute or "app").split("."):
        app = getattr(app, part)
    return app


async def _run(args: argparse.Namespace, target: Target) -> Report:
    if args.app:
        transport: httpx.AsyncBaseTransport = httpx.ASGITransport(app=_load_app(args.app))
    else:
        transport = httpx.AsyncHTTPTransport()
    async with httpx.AsyncClient(
        transport=transport, base_url=args.url, timeout=args.timeout
    ) as client:
        return await run_checks(client, target, only=args.only)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; 0 when every check passed or was skipped, 1 when one failed, 2 on
    bad arguments."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        target = _target(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        report = anyio.run(_run, args, target)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"bastion check {args.url}: {target.method} {target.path}")
    print(report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
