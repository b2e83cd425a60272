"""A private 3-master Redis Cluster on loopback for the cluster tests, started and torn down
by the tests themselves (never the shared Redis).

Three ``redis-server --cluster-enabled yes`` processes on free ports, joined with
``redis-cli --cluster create … --cluster-replicas 0``; ready once every node reports
``cluster_state:ok``. A missing ``redis-server`` or ``redis-cli`` skips locally and fails
under ``CI=true``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.stores.redis_support import PrivateRedis, free_port

MASTERS = 3
READY_TIMEOUT = 30.0


@dataclass(frozen=True)
class Cluster:
    """A running cluster: its nodes (seed URL: the first) and a ``redis+cluster://`` URL."""

    nodes: tuple[PrivateRedis, ...]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def cli(self, port: int, *args: str) -> str:
        """Run ``redis-cli -p port args…`` and return its output."""
        done = subprocess.run(
            ["redis-cli", "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout

    def keys_per_node(self) -> dict[int, int]:
        """How many keys each master holds (``DBSIZE``), by port."""
        return {node.port: int(self.cli(node.port, "DBSIZE").strip()) for node in self.nodes}

    def moved_replies(self) -> int:
        """MOVED errors the masters answered so far (``INFO errorstats``)."""
        total = 0
        for node in self.nodes:
            for line in self.cli(node.port, "INFO", "errorstats").splitlines():
                if line.startswith("errorstat_MOVED:"):
                    total += int(line.split("count=")[1].split(",")[0])
        return total


def _require(binary: str) -> None:
    if shutil.which(binary) is None:
        reason = f"{binary} is not installed: the Redis Cluster tests need it"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)


def _wait_ok(cluster: Cluster) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        states = [cluster.cli(node.port, "CLUSTER", "INFO") for node in cluster.nodes]
        if all("cluster_state:ok" in state for state in states):
            return
        time.sleep(0.1)
    pytest.fail(f"the private Redis Cluster did not reach cluster_state:ok: {states}")


@contextmanager
def private_cluster(directory: Path) -> Iterator[Cluster]:
    """Start three cluster-enabled masters on free ports and join them; killed afterwards."""
    _require("redis-server")
    _require("redis-cli")
    with ExitStack() as stack:
        nodes = []
        for i in range(MASTERS):
            node_dir = directory / f"node{i}"
            node_dir.mkdir(parents=True, exist_ok=True)
            # a cluster node also listens on its port + 10000 (the cluster bus)
            node = PrivateRedis(
                free_port(below=55536),
                node_dir,
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(node_dir / "nodes.conf"),
                "--cluster-node-timeout", "5000",
            )  # fmt: skip
            node.start()
            stack.callback(node.stop)
            nodes.append(node)
        cluster = Cluster(tuple(nodes))
        subprocess.run(
            [
                "redis-cli", "--cluster", "create",
                *(f"127.0.0.1:{node.port}" for node in nodes),
                "--cluster-replicas", "0", "--cluster-yes",
            ],
            capture_output=True,
            timeout=60,
            check=True,
        )  # fmt: skip
        _wait_ok(cluster)
        yield cluster
