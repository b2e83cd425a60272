"""The metrics middleware's direct observations record what prometheus_client's own would."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bastion.metrics._middleware import _incrementer, _observer

BUCKETS = (0.0, 1.0, 2.5, 100.0, 10_000.0)
AMOUNTS = (0, 0.0, 0.5, 1, 1.0, 1.5, 2.5, 2.6, 99, 100, 101, 9_999.5, 10_000, 10_001, 1e12, -3)


def samples(registry: CollectorRegistry) -> list[tuple[str, list[tuple[str, str]], float]]:
    return sorted(
        (s.name, sorted(s.labels.items()), s.value)
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    )


def test_direct_observations_match_the_public_api() -> None:
    """Sums and every bucket (bounds included) come out the same as through ``observe``
    and ``inc``, for histograms, counters and gauges."""
    registries = CollectorRegistry(), CollectorRegistry()
    children: list[tuple[Any, Any, Any]] = []
    for registry in registries:
        histogram = Histogram("h", "h", ("route",), buckets=BUCKETS, registry=registry)
        counter = Counter("c", "c", ("route",), registry=registry)
        gauge = Gauge("g", "g", ("route",), registry=registry)
        children.append((histogram.labels("/a"), counter.labels("/a"), gauge.labels("/a")))
    (public_h, public_c, public_g), (direct_h, direct_c, direct_g) = children
    observe, count, gauge_inc = _observer(direct_h), _incrementer(direct_c), _incrementer(direct_g)
    for amount in AMOUNTS:
        public_h.observe(amount)
        observe(amount)
        public_c.inc()
        count(1)
        public_g.inc()
        gauge_inc(1)
    public_g.dec()
    gauge_inc(-1)
    assert samples(registries[0]) == samples(registries[1])
    assert observe is not direct_h.observe  # the direct path is the one under test


def test_an_unknown_child_falls_back_to_the_public_api() -> None:
    """A child without the internals this version knows is observed through its methods."""

    class Child:
        def observe(self, amount: float) -> None: ...

        def inc(self, amount: float = 1) -> None: ...

    child = Child()
    assert _observer(child) == child.observe
    assert _incrementer(child) == child.inc
