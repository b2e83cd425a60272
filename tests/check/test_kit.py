"""The conformance kit passes a service that keeps bastion's promises (the reference service,
a correct fake) and names each promise a deliberately broken service breaks."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bastion.check import CHECKS, Report, run_checks
from bastion.testing import FakeClock
from tests.check.apps import ORDERS, REGISTER, FakeService, Flaws, advance, reference_service

pytestmark = pytest.mark.anyio


async def _check(service: FakeService, only: tuple[str, ...] = ()) -> Report:
    transport = httpx.ASGITransport(app=service)
    async with httpx.AsyncClient(transport=transport, base_url="http://fake") as client:
        return await run_checks(
            client, ORDERS, only=only, sleep=lambda s: advance(service.clock, s)
        )


def _failing(report: Report) -> set[str]:
    return {result.name for result in report.failed}


async def test_the_reference_service_passes_every_check(tmp_path: Path) -> None:
    """Embedded reference service, in-process: every check passes, none is skipped except the
    keyless one it was not asked for, and the rate-limit checks waited on the fake clock."""
    clock = FakeClock()
    start = clock()
    async with reference_service(tmp_path, clock) as client:
        report = await run_checks(client, REGISTER, sleep=lambda s: advance(clock, s))
    assert report.ok, report.table()
    statuses = {r.name: r.status for r in report.results}
    assert statuses == dict.fromkeys(CHECKS, "pass") | {"missing-key-400": "skip"}
    assert clock() > start  # t and Retry-After were waited out, on the fake clock


async def test_the_reference_service_requires_keys(tmp_path: Path) -> None:
    """With ``require_key`` the keyless check runs too, and passes (``/api/*`` needs a key)."""
    import dataclasses

    clock = FakeClock()
    async with reference_service(tmp_path, clock) as client:
        target = dataclasses.replace(REGISTER, require_key=True)
        report = await run_checks(client, target, only=["missing-key-400"])
    assert [(r.name, r.status) for r in report.results] == [("missing-key-400", "pass")]


async def test_a_correct_fake_passes_every_check() -> None:
    """The fake with no flaw passes: each failure below comes from its flaw alone."""
    report = await _check(FakeService())
    assert report.ok, report.table()
    assert {r.name for r in report.results if r.status == "pass"} == set(CHECKS) - {
        "missing-key-400"
    }


@pytest.mark.parametrize(
    ("flaw", "failing"),
    [
        ("replays_cookies", {"replay-no-set-cookie"}),
        ("replay_differs", {"replay-identical", "quoted-key"}),
        ("ignores_principal", {"principals-apart"}),
        ("ignores_body", {"mismatch-422"}),
        ("no_lock", {"in-flight"}),
        ("quoted_is_another_key", {"quoted-key"}),
        ("t_early", {"ratelimit-t-honoured"}),
        ("retry_after_early", {"ratelimit-429", "ratelimit-retry-after-honoured"}),
        (
            "malformed_fields",
            {"ratelimit-fields", "ratelimit-429", "ratelimit-t-honoured"},
        ),
    ],
)
async def test_each_flaw_fails_the_checks_that_name_it(flaw: str, failing: set[str]) -> None:
    """A service with one flaw fails exactly the checks for that promise, with evidence."""
    report = await _check(FakeService(Flaws(**{flaw: True})))
    assert _failing(report) == failing, report.table()
    for result in report.failed:
        assert result.evidence
        assert result.name in report.table()
