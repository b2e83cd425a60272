"""The load scenarios' short version: the real stack under Locust for 20 seconds, then the
audit. It asserts the invariants the audit checks, never a throughput."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import service_url

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "examples" / "reference_service"

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]


def _run(scenario: str, out: Path) -> tuple[int, str, dict[str, Any]]:
    # never imported here: locust monkey-patches the process it is imported in (gevent)
    assert importlib.util.find_spec("locust"), "locust is in requirements-dev.txt"
    postgres = service_url("BASTION_TEST_POSTGRES_URL")
    redis = service_url("BASTION_TEST_REDIS_URL")
    env_path = f"{ROOT / 'src'}:{SERVICE / 'src'}"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest",
            scenario,
            "--short",
            "--api-workers",
            "2",
            "--queue-workers",
            "1",
            "--postgres-url",
            postgres,
            "--redis-url",
            redis,
            "--out",
            str(out),
        ],
        cwd=SERVICE,
        env={**_environ(), "PYTHONPATH": env_path},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    summary_file = out / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    return result.returncode, result.stdout + result.stderr, summary


def _environ() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("RL_", "BASTION_SERVICE_"))}


def _agree(counters: dict[str, list[int]], in_doubt: int) -> bool:
    """Server counts equal the clients', or above them by no more than the requests whose
    answer no client saw (none, unless a connection closed or Locust killed a user)."""
    return all(0 <= server - client <= in_doubt for server, client in counters.values())


def test_register_load_keeps_every_invariant(tmp_path: Path) -> None:
    """Sign-ups under load with retries, concurrent duplicates, relayer failures and rate
    limits: no 5xx but the injected 503s, one wallet per key, every 429 counted on both
    sides, and the server's counters (all processes) equal to the clients'."""
    code, output, summary = _run("register", tmp_path)
    assert code == 0, output[-6000:]
    figures = summary["figures"]
    assert summary["failures"] == []
    assert figures["unexpected_5xx"] == 0
    assert figures["statuses"].get("201", 0) > 0
    assert (tmp_path / "register.png").stat().st_size > 0
    counters = figures["counters"]
    assert _agree(counters, figures["in_doubt"]), counters
    assert counters["replayed"][0] > 0  # retries with the same key were replayed


def test_claim_load_keeps_every_invariant(tmp_path: Path) -> None:
    """Claims under load with duplicates and mismatches: one claim per key, every intent
    settled exactly once or in the DLQ, every program's ledger at 0, no 5xx but the
    injected 503s, and the server's counters equal to the clients'."""
    code, output, summary = _run("claim", tmp_path)
    assert code == 0, output[-6000:]
    figures = summary["figures"]
    assert summary["failures"] == []
    assert figures["claims"] > 0
    assert figures["claims_by_one_key"] == figures["claims"]
    assert set(figures["intents"]) <= {"SETTLED", "FAILED"}
    assert sum(figures["intents"].values()) > 0
    assert all(balance == 0 for balance in figures["ledger"].values())
    counters = figures["counters"]
    assert _agree(counters, figures["in_doubt"]), counters
    assert counters["payload_mismatch"][1] > 0  # the mismatches were sent, and refused
    assert (tmp_path / "claim.png").stat().st_size > 0
