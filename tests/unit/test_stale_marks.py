"""Stale-bucket marks: one per stream, binary, one span per (property, kind, half hour); read
back to the spans the rollup maintainer takes, and old JSON marks still read."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.wire.topics import stream_key
from pipeline.worker.batch import bundle_marks, column_bundles, column_marks, read_marks, row_changes, stale_marks
from processors.columns import raw_table
from processors.datum import Datum
from processors.rows import RawColumns
from processors.stale_marks import (
    HALFHOUR_MS,
    MarkColumns,
    MarkError,
    Span,
    SpanColumns,
    StaleMark,
    bundle,
    compact,
    decode,
    encode,
    encode_columns,
    mark_columns,
    marks_in,
    unbundle,
)

INT64 = st.integers(-(2**63), 2**63 - 1)
MS = st.integers(-(2**62), 2**62)
TEXT = st.text(max_size=12)


def by_stream(spans: SpanColumns) -> dict[tuple[int, str], list[Span]]:
    """The columns as (node, source) -> spans, in column order: what the assertions compare."""
    out: dict[tuple[int, str], list[Span]] = {}
    for node, source, prop, kind, lo, hi in zip(
        spans.node_id, spans.source_id, spans.property, spans.kind, spans.first, spans.last, strict=True
    ):
        out.setdefault((node, source), []).append((prop, kind, lo, hi))
    return out


def test_marks_round_trip_per_stream() -> None:
    rows = RawColumns()
    rows.add_datum(Datum(1, "/a", 10, {"w": 1.0}, {"wh": 2.0}))
    rows.add_datum(Datum(2, "/b", 20, {}, {}, {"mode": "x"}))
    rows.add_datum(Datum(1, "/a", 30, {"w": 3.0}))
    rows.add_datum(Datum(1, "/a", 20, {"w": 2.0}))  # inside w's span: carried by its ends
    marks = stale_marks(row_changes(rows))
    assert [key for key, _ in marks] == [stream_key(1, "/a"), stream_key(2, "/b")]
    assert marks == column_marks(rows)
    spans, batches = read_marks([value for _, value in marks])
    assert by_stream(spans) == {
        (1, "/a"): [("w", "i", 10, 30), ("wh", "a", 10, 10)],
        (2, "/b"): [("mode", "s", 20, 20)],
    }
    assert batches == set()


def test_marks_carry_the_raw_batch_stamp_and_old_json_marks_still_read() -> None:
    binary = stale_marks([(1, "/a", HALFHOUR_MS + 5, "wh", "a")], inserted_ms=1_700_000_000_123)
    old = json.dumps(
        {
            "node": 1,
            "source": "/a",
            "inserted": 1_700_000_000_456,
            "changes": [["wh", "a", HALFHOUR_MS + 9], ["wh", "a", HALFHOUR_MS + 1], ["w", "i", 7]],
        }
    ).encode()
    spans, batches = read_marks([binary[0][1], old])
    # the two marks' spans of one half hour are joined
    assert by_stream(spans) == {(1, "/a"): [("wh", "a", HALFHOUR_MS + 1, HALFHOUR_MS + 9), ("w", "i", 7, 7)]}
    assert batches == {(1, "/a", 1_700_000_000_123), (1, "/a", 1_700_000_000_456)}


SPANS = st.lists(
    st.tuples(TEXT, st.text(max_size=3), MS, st.integers(0, 2**32 - 1)).map(lambda t: (t[0], t[1], t[2], t[2] + t[3])),
    max_size=20,
)


@given(node=st.integers(0, 2**64 - 1), source=TEXT, spans=SPANS, inserted=st.none() | INT64)
def test_encode_decode_round_trip(node: int, source: str, spans: list[Span], inserted: int | None) -> None:
    data = encode(node, source, spans, inserted)
    assert data[:1] != b"{"  # the version byte tells it from an old JSON mark
    assert decode(data) == StaleMark(node, source, inserted, tuple(spans))


@given(spans=SPANS, inserted=st.none() | INT64, cut=st.integers(0, 10_000))
def test_a_cut_mark_is_refused_not_misread(spans: list[Span], inserted: int | None, cut: int) -> None:
    data = encode(7, "/s", spans, inserted)
    with pytest.raises(MarkError):
        decode(data[: cut % len(data)])
    with pytest.raises(MarkError):
        decode(data + b"\0")


@settings(max_examples=300)
@given(st.binary(max_size=80))
def test_any_bytes_decode_or_raise_mark_error(data: bytes) -> None:
    try:
        mark = decode(data)
    except MarkError:
        return
    assert all(lo <= hi for _, _, lo, hi in mark.spans)


ROWS = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.sampled_from(["/a", "/b"]),
        st.integers(-10 * HALFHOUR_MS, 10 * HALFHOUR_MS),
        st.sampled_from(["w", "wh", "mode"]),
        st.sampled_from(["i", "a", "s"]),
    ),
    max_size=60,
)


def reference_spans(rows: list[tuple[int, str, int, str, str]]) -> dict[tuple[int, str], set[Span]]:
    cells: dict[tuple[int, str, str, str, int], list[int]] = {}
    for node, source, c, prop, kind in rows:
        cells.setdefault((node, source, prop, kind, c // HALFHOUR_MS), []).append(c)
    out: dict[tuple[int, str], set[Span]] = {}
    for (node, source, prop, kind, _), cs in cells.items():
        out.setdefault((node, source), set()).add((prop, kind, min(cs), max(cs)))
    return out


@given(rows=ROWS, parts=st.integers(1, 4), inserted=st.none() | MS)
def test_marks_hold_each_half_hours_first_and_last_change(
    rows: list[tuple[int, str, int, str, str]], parts: int, inserted: int | None
) -> None:
    """However the changes are split into batches, the marks read back to one span per
    (stream, property, kind, half hour) with the first and last changed created in it."""
    values = [value for k in range(parts) for _, value in stale_marks(rows[k::parts], inserted)]
    spans, batches = read_marks(values)
    streams = by_stream(spans)
    assert {k: set(v) for k, v in streams.items()} == reference_spans(rows)
    assert all(len(v) == len(set(v)) for v in streams.values())  # each half hour once, however many marks
    assert batches == ({(n, s, inserted) for n, s, *_ in rows} if inserted is not None else set())
    cols = compact(*zip(*rows, strict=True)) if rows else compact([], [], [], [], [])
    assert {k: set(v) for k, v in by_stream(cols).items()} == reference_spans(rows)
    assert cols.joined() == cols


ARROW_ROWS = st.lists(
    st.tuples(
        st.sampled_from([0, 1, 2**40, 2**64 - 1]),
        st.sampled_from(["/a", "/b", "/\u00e9", ""]),
        st.integers(-(2**40), 2**40) | st.sampled_from([-1, 0, HALFHOUR_MS - 1, HALFHOUR_MS]),
        st.sampled_from(["w", "wh", "mode"]),
        st.sampled_from(["i", "a", "s"]),
    ),
    max_size=80,
)


def arrow_marks(rows: list[tuple[int, str, int, str, str]], inserted: int | None) -> MarkColumns:
    """The changes as the columnar path's Arrow columns, made into `MarkColumns`."""
    node, source, created, prop, kind = (list(c) for c in zip(*rows, strict=True)) if rows else ([], [], [], [], [])
    return mark_columns(
        pa.array(node, pa.uint64()),
        pa.array(source, pa.string()),
        np.asarray(created, dtype=np.int64),
        pa.array(prop, pa.string()),
        pa.array(kind, pa.string()),
        inserted,
    )


@settings(max_examples=300, deadline=None)
@given(rows=ARROW_ROWS, inserted=st.none() | MS)
def test_marks_of_arrow_columns_are_the_marks_of_lists_byte_for_byte(
    rows: list[tuple[int, str, int, str, str]], inserted: int | None
) -> None:
    """The columnar datum path's marks (`mark_columns`, Arrow's hash grouping) are those of the
    per-row reference (`encode_columns`): streams and spans in first-seen order, the same bytes."""
    node, source, created, prop, kind = (list(c) for c in zip(*rows, strict=True)) if rows else ([], [], [], [], [])
    want = encode_columns(node, source, created, prop, kind, inserted)
    assert arrow_marks(rows, inserted).marks() == want


def test_column_marks_read_arrow_tables_and_lists_alike() -> None:
    rows = RawColumns()
    for k, prop in enumerate(["w", "wh", "w", "mode"]):
        d = Datum(7, "/s", 1_000 + k * HALFHOUR_MS // 2, {prop: 1.0})
        rows.add(d, "i", prop, 1.0)
    assert column_marks(raw_table(rows), 5) == column_marks(rows, 5)
    assert len(column_marks(raw_table(rows), 5)) == 1


@given(rows=ROWS, parts=st.integers(1, 4), groups=st.integers(1, 5), inserted=st.none() | MS)
def test_bundled_marks_read_back_as_the_marks_themselves(
    rows: list[tuple[int, str, int, str, str]], parts: int, groups: int, inserted: int | None
) -> None:
    """However the marks are grouped into bundles (one per partition of the stale topic), the
    bundles read back to exactly what the marks read back to."""
    values = [value for k in range(parts) for _, value in stale_marks(rows[k::parts], inserted)]
    bundles = [bundle(values[g::groups]) for g in range(groups)]
    # the rollup take weighs a message by its marks, read from the head alone
    assert [marks_in(b) for b in bundles] == [len(values[g::groups]) for g in range(groups)]
    assert all(marks_in(v) == 1 for v in values)
    assert [m for b in bundles for m in unbundle(b)] == [v for g in range(groups) for v in values[g::groups]]
    alone, alone_batches = read_marks(values)
    spans, batches = read_marks(bundles)
    assert {k: set(v) for k, v in by_stream(spans).items()} == {k: set(v) for k, v in by_stream(alone).items()}
    assert batches == alone_batches


@given(spans=SPANS, n=st.integers(1, 3), cut=st.integers(0, 10_000))
def test_a_cut_bundle_is_refused_not_misread(spans: list[Span], n: int, cut: int) -> None:
    data = bundle([encode(7, f"/s{k}", spans, 5) for k in range(n)])
    with pytest.raises(MarkError):
        read_marks([data[: max(1, cut % len(data))]])
    with pytest.raises(MarkError):
        read_marks([data + b"\0"])
    with pytest.raises(ValueError):
        bundle([data])  # bundles do not nest


@settings(max_examples=300)
@given(st.binary(max_size=80))
def test_any_bytes_after_a_bundle_byte_read_or_raise_mark_error(data: bytes) -> None:
    try:
        read_marks([b"\x02" + data])
    except MarkError:
        return


@given(
    rows=ROWS,
    parts=st.integers(1, 4),
    partitions=st.integers(1, 4),
    unknown=st.sets(st.integers(0, 3)),
    max_bytes=st.integers(1, 400),
)
def test_bundles_keep_each_stream_on_its_partition_in_order(
    rows: list[tuple[int, str, int, str, str]], parts: int, partitions: int, unknown: set[int], max_bytes: int
) -> None:
    """Each message holds marks of one partition only, each stream's marks in the order made; a
    mark of unknown partition goes alone under its stream's key; a bundle exceeds `max_bytes` only
    when one mark does."""
    marks = [m for k in range(parts) for m in stale_marks(rows[k::parts], 9)]

    def partition_of(key: bytes) -> int | None:
        node = next(n for n, s, *_ in rows if stream_key(n, s) == key)
        return None if node in unknown else hash(key) % partitions

    messages = bundle_marks(marks, partition_of, max_bytes)
    sent: dict[int | None, list[bytes]] = {}
    for partition, key, value in messages:
        inside = unbundle(value)
        if partition is None:
            assert key is not None and inside == [value] and partition_of(key) is None
        else:
            assert key is None
            assert {partition_of(stream_key(m.node_id, m.source_id)) for m in map(decode, inside)} == {partition}
            assert len(inside) == 1 or sum(map(len, inside)) <= max_bytes
        sent.setdefault(partition, []).extend(inside)
    for p in {partition_of(k) for k, _ in marks}:
        assert sent[p] == [v for k, v in marks if partition_of(k) == p]  # none lost, none reordered


# -- bundles of arrays (version 3) -----------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(rows=ARROW_ROWS.filter(bool), inserted=st.none() | MS, max_bytes=st.sampled_from([1, 200, 1 << 20]))
def test_bundles_of_arrays_read_back_as_the_marks_of_a_stream_each(
    rows: list[tuple[int, str, int, str, str]], inserted: int | None, max_bytes: int
) -> None:
    """The marks as arrays, in bundles of version 3 (one, or one a stream where they must be
    small), read back to exactly what the marks of version 1 of the same rows read back to: the
    same spans in the same order, the same raw batches; each message counts its streams."""
    marks = arrow_marks(rows, inserted)
    node, source, created, prop, kind = (list(c) for c in zip(*rows, strict=True))
    want = read_marks([m for _, _, m in encode_columns(node, source, created, prop, kind, inserted)])
    assert [m for _, _, m in marks.marks()] == [
        m for _, _, m in encode_columns(node, source, created, prop, kind, inserted)
    ]
    values = marks.bundles(np.arange(len(marks)), max_bytes)
    assert len(values) == 1 or max_bytes < 1 << 20
    assert sum(marks_in(v) for v in values) == len(marks) == len(by_stream(want[0]))
    assert read_marks(values) == want


@settings(max_examples=100, deadline=None)
@given(
    rows=ARROW_ROWS.filter(bool),
    partitions=st.integers(1, 4),
    unknown=st.sets(st.sampled_from([0, 1, 2**40, 2**64 - 1])),
)
def test_bundles_of_arrays_keep_each_stream_on_its_partition(
    rows: list[tuple[int, str, int, str, str]], partitions: int, unknown: set[int]
) -> None:
    """`column_bundles`: each message holds the streams of one partition (a stream of unknown
    partition alone, a mark of version 1 under its key); together they read back to the spans
    and batches of a mark per stream."""
    marks = arrow_marks(rows, 9)

    def partition_of(key: bytes) -> int | None:
        node = int(key.split(b"\x1f")[0])
        return None if node in unknown else hash(key) % partitions

    messages = column_bundles(marks, partition_of, 300)
    for partition, key, value in messages:
        spans, _ = read_marks([value])
        if partition is None:
            assert key is not None and value[:1] == b"\x01" and partition_of(key) is None
        else:
            assert key is None and value[:1] == b"\x03"
            assert {partition_of(stream_key(n, s)) for n, s in by_stream(spans)} == {partition}
    got, batches = read_marks([value for *_, value in messages])
    node, source, created, prop, kind = (list(c) for c in zip(*rows, strict=True))
    want, want_batches = read_marks([m for _, _, m in encode_columns(node, source, created, prop, kind, 9)])
    assert {k: sorted(v) for k, v in by_stream(got).items()} == {k: sorted(v) for k, v in by_stream(want).items()}
    assert batches == want_batches


def test_a_bundle_of_arrays_cut_or_padded_or_pointing_nowhere_is_refused() -> None:
    rows = [(1, "/a", 10, "w", "i"), (1, "/a", HALFHOUR_MS + 5, "wh", "a"), (2, "/b", 20, "mode", "s")]
    (value,) = arrow_marks(rows, 7).bundles(np.arange(2), 1 << 20)
    assert read_marks([value])[1] == {(1, "/a", 7), (2, "/b", 7)}
    for cut in range(1, len(value)):
        with pytest.raises(MarkError):
            read_marks([value[:cut]])
    with pytest.raises(MarkError):
        read_marks([value + b"\x00"])
    # the last span's name index (4 bytes before the firsts and deltas) pointing past the names
    m = 3
    at = len(value) - 16 * m - 4
    with pytest.raises(MarkError):
        read_marks([value[:at] + (99).to_bytes(4, "little") + value[at + 4 :]])
