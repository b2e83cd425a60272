"""``bastion check``: the table on stdout, exit 0 when nothing failed and 1 when a check did."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bastion.check._cli import main


def test_a_correct_app_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    """Against a service that keeps its promises the command prints PASS lines and exits 0."""
    code = main(
        [
            "check",
            "http://fake",
            "--app",
            "tests.check.apps:app",
            "--path",
            "/orders",
            "--only",
            "idempotency",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "FAIL" not in out
    assert "6 passed, 0 failed" in out


def test_a_broken_app_exits_one_naming_each_failed_check(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Against one that replays cookies and ignores principals, exit 1, and the table names
    those two checks as FAIL with their evidence."""
    code = main(
        [
            "check",
            "http://fake",
            "--app",
            "tests.check.apps:broken_app",
            "--path",
            "/orders",
            "--only",
            "idempotency",
            "--principal-a",
            "X-API-Key: one",
            "--principal-b",
            "X-API-Key: two",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    failed = [line.split()[0] for line in out.splitlines() if line.endswith("  FAIL")]
    assert failed == ["replay-no-set-cookie", "principals-apart"]
    assert "the replay sets cookies" in out
    assert "principal B got principal A's stored response" in out


def test_bad_arguments_exit_two(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown check or a malformed header is a usage error, not a run."""
    for argv in (["--only", "nope"], ["-H", "no colon"], ["--path", "relative"]):
        with pytest.raises(SystemExit) as exit_:
            main(["check", "http://fake", "--app", "tests.check.apps:app", *argv])
        assert exit_.value.code == 2
    assert "unknown checks" in capsys.readouterr().err


def test_the_console_command_runs_as_a_module() -> None:
    """``python -m bastion.check URL`` is the same command (the installed ``bastion`` script
    points at the same ``main``)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bastion.check",
            "http://fake",
            "--app",
            "tests.check.apps:app",
            "--path",
            "/orders",
            "--only",
            "quoted-key",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "quoted-key  PASS" in done.stdout
