"""The run's picture: latency percentiles and throughput per second (matplotlib, Agg)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["plot_run"]


def plot_run(events: list[dict[str, Any]], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from loadtest.audit import percentile

    start = min(e["t"] for e in events)
    buckets: dict[int, list[float]] = defaultdict(list)
    for e in events:
        buckets[int(e["t"] + e["ms"] / 1000 - start)].append(e["ms"])
    seconds = list(range(max(buckets) + 1))
    figure, (latency, throughput) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    for q, style in ((50, "-"), (95, "--"), (99, ":")):
        values = [percentile(buckets.get(s, []), q) for s in seconds]
        latency.plot(seconds, values, style, label=f"p{q}")
    latency.set_ylabel("latency (ms)")
    if any(not math.isnan(v) and v > 0 for vs in buckets.values() for v in vs):
        latency.set_yscale("log")
    latency.legend(loc="upper left")
    latency.grid(True, alpha=0.3)
    throughput.plot(seconds, [len(buckets.get(s, [])) for s in seconds], color="tab:green")
    limited: defaultdict[int, int] = defaultdict(int)
    for e in events:
        if e["status"] == 429:
            limited[int(e["t"] + e["ms"] / 1000 - start)] += 1
    throughput.plot(seconds, [limited.get(s, 0) for s in seconds], color="tab:orange")
    throughput.legend(["answers/s", "429/s"], loc="upper left")
    throughput.set_ylabel("answers per second")
    throughput.set_xlabel("seconds into the run")
    throughput.grid(True, alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
