"""The server's counters, summed over every process, against what the clients counted.

Every answer a client logged was counted by the server, so no server count may be below the
clients'. Each request in doubt (see `loadtest.clientlog`) may have added at most one
decision to each family (an idempotency outcome, a tier's allowed or limited, an HTTP
status), so a family may exceed the clients' counts by at most that many in all: with no
request in doubt, the comparison is exact.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["compare_family", "metric_processes", "server_counters", "wait_quiet"]

WANTED = {
    "bastion_idempotency_decisions_total": ("outcome",),
    "bastion_ratelimit_decisions_total": ("tier", "outcome"),
    "bastion_http_requests_total": ("method", "status"),
    "bastion_http_requests_in_flight": ("method",),
}


def server_counters(metrics_dir: Path) -> dict[str, Counter[tuple[str, ...]]]:
    """Every process's counters summed: name -> labels -> value (multiprocess mode files)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    found: dict[str, Counter[tuple[str, ...]]] = {name: Counter() for name in WANTED}
    for metric in registry.collect():
        for sample in metric.samples:
            labels = WANTED.get(sample.name)
            if labels is not None:
                found[sample.name][tuple(sample.labels.get(n, "") for n in labels)] += int(
                    sample.value
                )
    return found


def wait_quiet(metrics_dir: Path, within: float) -> tuple[int, dict[str, Counter[tuple[str, ...]]]]:
    """The counters once no POST is in flight on the server, or after ``within`` seconds:
    a request is counted only after its answer is sent, so a read while one is still being
    handled (a client stopped it, the server did not) would come too early. Returns the
    POSTs still in flight (0 when quiet) and the counters."""
    deadline = time.monotonic() + within
    while True:
        counters = server_counters(metrics_dir)
        busy = counters["bastion_http_requests_in_flight"][("POST",)]
        if busy <= 0 or time.monotonic() > deadline:
            return busy, counters
        time.sleep(0.2)


def metric_processes(metrics_dir: Path) -> int:
    """How many service processes wrote counters: more than were started means one was
    replaced (uvicorn restarts a worker that misses its health check)."""
    return len({f.stem.rsplit("_", 1)[-1] for f in metrics_dir.glob("*.db")})


def compare_family(
    family: str, client: Mapping[str, int], server: Mapping[str, int], doubt: int
) -> list[str]:
    """The failures of one family of counters (one decision per request) against the
    clients' counts, given how many of the family's requests are in doubt."""
    failures = [
        f"{name}: server {server[name]}, client {client[name]}"
        for name in client
        if server[name] < client[name]
    ]
    excess = sum(max(0, server[name] - client[name]) for name in client)
    if excess > doubt:
        failures.append(
            f"{family}: the server counted {excess} decisions no client saw, "
            f"{doubt} requests in doubt"
        )
    return failures


def family_figures(client: Mapping[str, int], server: Mapping[str, Any]) -> dict[str, list[int]]:
    return {name: [int(server[name]), int(client[name])] for name in client}
