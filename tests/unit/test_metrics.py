"""observe_many: the same histogram as observing one value at a time; the position sensor's lag."""

from __future__ import annotations

from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from pipeline.worker.metrics import build_metrics, observe_many
from pipeline.worker.sensor import PositionMonitor


def samples(h: Histogram) -> dict[str, float]:
    return {
        s.name + str(sorted(s.labels.items())): s.value
        for m in h.collect()
        for s in m.samples
        if not s.name.endswith("_created")
    }


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


# -- the position sensor (pipeline/worker/sensor.py): Faust's hooks in, pipeline_consumer_lag out -----------------

TP_A, TP_B = TP("datum..a", 0), TP("datum..a", 1)


class Message:
    """What Faust's Monitor does with a message in its hooks: stamps its times."""

    time_in: float | None = None
    time_out: float | None = None
    time_total: float | None = None


def lag_samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (s.labels["topic"], s.labels["partition"]): s.value
        for m in registry.collect()
        for s in m.samples
        if s.name == "pipeline_consumer_lag"
    }


def monitor() -> tuple[PositionMonitor, CollectorRegistry]:
    registry = CollectorRegistry()
    return PositionMonitor(build_metrics(registry).consumer_lag), registry


def test_lag_counts_the_messages_after_the_last_handled_one() -> None:
    mon, registry = monitor()
    for offset in range(10):
        mon.on_message_in(TP_A, offset, msg := Message())
        if offset < 5:  # acked: stored or dead-lettered
            mon.on_message_out(TP_A, offset, msg)
    mon.on_message_in(TP_B, 0, Message())  # consumed, never handled: no lag series yet
    mon.update_lag([TP_A, TP_B], {TP_A: 12, TP_B: 3}.get)
    assert lag_samples(registry) == {("datum..a", "0"): 7.0}  # 5..11 not handled
    pos = mon.positions[TP_A]
    assert (pos.consumed, pos.handled, pos.committed) == (9, 4, None)


def test_commits_and_end_offsets_come_from_the_monitor_hooks() -> None:
    mon, registry = monitor()
    mon.on_message_out(TP_A, 2, Message())
    mon.track_tp_end_offset(TP_A, 8)
    mon.on_tp_commit({TP_A: 3})
    assert mon.positions[TP_A].committed == 3
    mon.update_lag([TP_A], lambda tp: None)  # the consumer does not know the end: the tracked one
    assert lag_samples(registry) == {("datum..a", "0"): 5.0}
    mon.update_lag([TP_A], lambda tp: 2)  # the broker lost its data (an embedded one restarted): not below 0
    assert lag_samples(registry) == {("datum..a", "0"): 0.0}


def test_a_revoked_partition_is_forgotten_and_its_series_keeps_its_last_value() -> None:
    mon, registry = monitor()
    mon.on_message_out(TP_A, 4, Message())
    mon.update_lag([TP_A], lambda tp: 10)
    mon.forget([TP_A])
    assert TP_A not in mon.positions
    mon.update_lag([TP_A], lambda tp: 20)  # assigned again, nothing handled since: no new value
    assert lag_samples(registry) == {("datum..a", "0"): 5.0}
