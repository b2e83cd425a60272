"""Multiprocess mode: two real uvicorn processes, one aggregated exposition."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_up(base: str, process: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"worker exited early with {process.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"{base} did not come up")


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[str]]:
    """Two uvicorn processes of tests/metrics/mp_app.py sharing one PROMETHEUS_MULTIPROC_DIR."""
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    processes: list[subprocess.Popen[bytes]] = []
    bases: list[str] = []
    try:
        for _ in range(2):
            port = free_port()
            command = [sys.executable, "-m", "uvicorn", "tests.metrics.mp_app:app"]
            command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
            processes.append(subprocess.Popen(command, cwd=ROOT, env=env))
            bases.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 10
        for base, process in zip(bases, processes, strict=True):
            wait_until_up(base, process, deadline)
        yield bases
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_exposition_aggregates_every_worker(workers: list[str]) -> None:
    """Counts sent to two processes add up exactly in the scrape of either one."""
    first, second = workers
    sent = {first: 30, second: 20}
    for base, count in sent.items():
        with httpx.Client(base_url=base) as c:
            for n in range(count):
                assert c.post(f"/work/{n}", content=b"x" * 10).status_code == 200

    for base in workers:
        text = httpx.get(f"{base}/metrics").text
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        work = (("method", "POST"), ("route", "/work/{n}"))
        assert samples[("bastion_http_requests_total", (*work, ("status", "200")))] == 50
        assert samples[("bastion_http_request_duration_seconds_count", work)] == 50
        assert samples[("bastion_http_request_size_bytes_sum", work)] == 500
        # livesum: only this scrape is in flight, across both live processes
        assert samples[("bastion_http_requests_in_flight", (("method", "GET"),))] == 1
        assert samples[("bastion_http_requests_in_flight", (("method", "POST"),))] == 0

    openmetrics = httpx.get(f"{first}/metrics", headers={"accept": OPENMETRICS})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    families = list(openmetrics_families(openmetrics.text))
    assert all(s.exemplar is None for f in families for s in f.samples)
