"""The metrics middleware's direct observations record what prometheus_client's own would."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bastion.metrics._direct import direct_record, incrementer, observer

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
    observe, count, gauge_inc = observer(direct_h), incrementer(direct_c), incrementer(direct_g)
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
    assert observer(child) == child.observe
    assert incrementer(child) == child.inc


def test_direct_record_matches_the_public_api() -> None:
    """One request's count, sizes, duration and in-flight decrement written at once come out
    as the eight public calls would write them."""
    registries = CollectorRegistry(), CollectorRegistry()
    children: list[tuple[Any, ...]] = []
    for registry in registries:
        counter = Counter("c", "c", ("route",), registry=registry)
        sizes_in = Histogram("i", "i", ("route",), buckets=BUCKETS, registry=registry)
        sizes_out = Histogram("o", "o", ("route",), buckets=BUCKETS, registry=registry)
        durations = Histogram("d", "d", ("route",), buckets=(0.1, 1.0), registry=registry)
        gauge = Gauge("g", "g", ("route",), registry=registry)
        metrics = (counter, sizes_in, sizes_out, durations, gauge)
        children.append(tuple(m.labels("/a") for m in metrics))
    (count, public_in, public_out, public_d, public_g), direct = children
    record = direct_record(*direct)
    assert record is not None
    for amount in AMOUNTS:
        public_g.inc()
        direct[4].inc()
        count.inc()
        public_in.observe(amount)
        public_out.observe(amount * 2)
        public_d.observe(amount / 100)
        public_g.dec()
        record(amount, amount * 2, amount / 100)
    assert samples(registries[0]) == samples(registries[1])


def test_direct_record_needs_plain_values() -> None:
    """Children whose values are not single-process floats (another version, multiprocess
    mode) get no direct record: they are observed one call at a time."""

    class Child:
        _value = object()

    registry = CollectorRegistry()
    histogram = Histogram("h", "h", ("route",), buckets=BUCKETS, registry=registry)
    child = histogram.labels("/a")
    counter = Counter("c", "c", registry=registry)
    gauge = Gauge("g", "g", registry=registry)
    assert direct_record(counter, child, child, child, gauge) is not None
    assert direct_record(Child(), child, child, child, gauge) is None
    assert direct_record(counter, Child(), child, child, gauge) is None
    assert direct_record(counter, child, child, child, Child()) is None
