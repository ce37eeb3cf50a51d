"""observe_many: the same histogram as observing one value at a time."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from pipeline.worker.metrics import observe_many


def samples(h: Histogram) -> dict[str, float]:
    return {s.name + str(sorted(s.labels.items())): s.value for m in h.collect() for s in m.samples
            if not s.name.endswith("_created")}


@given(st.lists(st.floats(-10, 200, allow_nan=False) | st.sampled_from([0.0, 10.0, 25.0, 100.0])))
def test_observe_many_equals_observe_one_by_one(values: list[float]) -> None:
    one = Histogram("one", "h", buckets=(0, 10, 25, 50, 75, 90, 99, 100), registry=CollectorRegistry())
    many = Histogram("one", "h", buckets=(0, 10, 25, 50, 75, 90, 99, 100), registry=CollectorRegistry())
    for v in values:
        one.observe(v)
    observe_many(many, values)
    a, b = samples(one), samples(many)
    assert a.keys() == b.keys()
    for k in a:
        assert abs(a[k] - b[k]) <= 1e-9 * max(1.0, abs(a[k])), k
