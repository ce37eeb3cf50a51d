"""Rollup lanes (pipeline/worker/rollups.py `RollupLanes`, processors/stale_marks.py
`SpanColumns.lanes`): the streams of one batch of marks recomputed side by side, no stream in
two lanes, and a batch that fails in one lane reported only once every lane has finished."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.worker.rollups import RollupLanes
from processors.stale_marks import SpanColumns

Row = tuple[int, str, str, str, int, int]

rows = st.lists(
    st.tuples(
        st.integers(1, 4),
        st.sampled_from(["/a", "/b", "/c", "/d/e"]),
        st.sampled_from(["watts", "wattHours"]),
        st.sampled_from(["i", "a"]),
        st.integers(0, 10**6),
        st.integers(0, 10**6),
    ),
    max_size=60,
)


def columns(items: list[Row]) -> SpanColumns:
    out = SpanColumns()
    for node, source, prop, kind, first, last in items:
        out.add(node, source, [prop], [kind], [first], [last])
    return out


def as_rows(spans: SpanColumns) -> list[Row]:
    return list(zip(spans.node_id, spans.source_id, spans.property, spans.kind, spans.first, spans.last, strict=True))


@given(rows, st.integers(1, 4))
def test_lanes_split_the_spans_by_stream_keeping_each_streams_order(items: list[Row], k: int) -> None:
    parts = columns(items).lanes(k)
    assert len(parts) == k
    lane_of: dict[tuple[int, str], int] = {}
    for lane, part in enumerate(parts):
        for row in as_rows(part):
            assert lane_of.setdefault(row[:2], lane) == lane, "a stream in two lanes"
    # every span in exactly one lane, each stream's spans in their order
    for stream in {r[:2] for r in items}:
        assert [r for r in as_rows(parts[lane_of[stream]]) if r[:2] == stream] == [r for r in items if r[:2] == stream]
    assert sum(len(p) for p in parts) == len(items)
    # streams dealt in turn: no lane has two streams more than another
    counts = [len({r[:2] for r in as_rows(p)}) for p in parts]
    assert max(counts) - min(counts) <= 1


class FakeLane:
    """A maintainer's `update_spans`: records the streams it was given, takes `seconds`, may fail."""

    def __init__(self, seconds: float = 0.0, error: Exception | None = None) -> None:
        self.seconds, self.error = seconds, error
        self.streams: list[set[tuple[int, str]]] = []
        self.finished = threading.Event()
        self.client = self.sink = object()
        self.kept_expired = 1

    def update_spans(self, spans: SpanColumns) -> int:
        self.streams.append(set(zip(spans.node_id, spans.source_id, strict=True)))
        time.sleep(self.seconds)
        self.finished.set()
        if self.error is not None:
            raise self.error
        return len(spans)


def lanes_of(*fakes: FakeLane) -> RollupLanes:
    return RollupLanes([f for f in fakes], min_streams=1)  # type: ignore[misc]  # fakes stand in for maintainers


def test_lanes_recompute_disjoint_streams_and_add_up_what_they_wrote() -> None:
    a, b = FakeLane(), FakeLane()
    lanes = lanes_of(a, b)
    spans = columns([(1, "/a", "w", "i", 1, 2), (2, "/a", "w", "i", 1, 2), (1, "/a", "x", "i", 3, 4)])
    assert lanes.update_spans(spans) == 3
    assert a.streams == [{(1, "/a")}] and b.streams == [{(2, "/a")}]
    assert lanes.kept_expired == 2
    lanes.close()


def test_a_failing_lane_is_reported_once_every_lane_has_finished() -> None:
    """The batch is retried when a lane fails: the retry must not meet a lane still writing."""
    slow, failing = FakeLane(seconds=0.3), FakeLane(error=ConnectionError("store away"))
    lanes = lanes_of(failing, slow)
    spans = columns([(1, "/a", "w", "i", 1, 2), (2, "/a", "w", "i", 1, 2)])
    with pytest.raises(ConnectionError):
        lanes.update_spans(spans)
    assert slow.finished.is_set(), "the error was raised while the other lane was still running"
    lanes.close()


def test_one_lane_is_the_maintainer_itself() -> None:
    one = FakeLane()
    lanes = lanes_of(one)
    spans = columns([(1, "/a", "w", "i", 1, 2), (2, "/b", "w", "i", 1, 2)])
    assert lanes.update_spans(spans) == 2 and one.streams == [{(1, "/a"), (2, "/b")}]
    with pytest.raises(ValueError):
        RollupLanes([], min_streams=1)


def test_a_batch_of_few_streams_stays_in_one_lane() -> None:
    """A lane costs its own statements: a batch gets a second lane from `min_streams` streams per lane."""
    a, b = FakeLane(), FakeLane()
    lanes = RollupLanes([a, b], min_streams=3)  # type: ignore[list-item]  # fakes stand in for maintainers
    five = columns([(n, "/a", "w", "i", 1, 2) for n in range(1, 6)])
    lanes.update_spans(five)
    assert len(a.streams[-1]) == 5 and b.streams == []
    six = columns([(n, "/a", "w", "i", 1, 2) for n in range(1, 7)])
    lanes.update_spans(six)
    assert len(a.streams[-1]) == 3 and len(b.streams[-1]) == 3
    lanes.close()
