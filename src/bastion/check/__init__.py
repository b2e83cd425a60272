"""A conformance kit: drive a running service over HTTP and judge what bastion promises.

``bastion check URL`` (or `run_checks` from Python, or the `bastion.check.pytest_plugin`
fixture) sends requests to one route as two principals and checks the idempotency matrix
(byte-identical replays, 422 on another payload, at most one run among concurrent
duplicates, quoted and bare keys alike, no ``Set-Cookie`` replayed, principals kept apart)
and the rate-limit fields (strict Structured Field lists, a 429 with ``Retry-After`` never
earlier than ``t``, and a request allowed once ``t`` or ``Retry-After`` has passed).

It is a client: it needs ``httpx`` (``pip install 'bastion[check]'``) and nothing in the
middleware imports it.
"""

from __future__ import annotations

from collections.abc import Iterable

try:
    import httpx
except ImportError as exc:  # pragma: no cover - depends on the environment
    from bastion.exceptions import missing_extra

    raise missing_extra("check", "httpx") from exc

from bastion.check._checks import CHECKS, Result, Sleep
from bastion.check._checks import Runner as _Runner
from bastion.check._report import Report
from bastion.check._target import Target

__all__ = ["CHECKS", "Report", "Result", "Sleep", "Target", "run_checks"]


async def run_checks(
    client: httpx.AsyncClient,
    target: Target,
    *,
    only: Iterable[str] = (),
    sleep: Sleep | None = None,
) -> Report:
    """Run the checks (all, or the names and groups in ``only``) against ``target`` through
    ``client``, whose ``base_url`` is the service. ``sleep`` waits out ``t`` and
    ``Retry-After``: `anyio.sleep` by default; a test gives its fake clock's advance."""
    selected = set(only)
    unknown = selected - set(CHECKS) - {group for group, _ in CHECKS.values()}
    if unknown:
        raise ValueError(f"unknown checks: {sorted(unknown)}; known: {sorted(CHECKS)}")
    runner = _Runner(client, target) if sleep is None else _Runner(client, target, sleep=sleep)
    results = []
    for name, (group, check) in CHECKS.items():
        if not selected or name in selected or group in selected:
            results.append(await runner.run(check, name))
    return Report(results)
