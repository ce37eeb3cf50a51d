"""Stale-bucket marks: one per stream, and back to the columns the rollup maintainer reads."""

from pipeline.topics import stream_key
from pipeline.worker import row_changes, stale_marks, stale_rows
from processors.datum import Datum
from processors.rows import RawColumns


def test_marks_round_trip_per_stream() -> None:
    rows = RawColumns()
    rows.add_datum(Datum(1, "/a", 10, {"w": 1.0}, {"wh": 2.0}))
    rows.add_datum(Datum(2, "/b", 20, {}, {}, {"mode": "x"}))
    rows.add_datum(Datum(1, "/a", 30, {"w": 3.0}))
    marks = stale_marks(row_changes(rows))
    assert [key for key, _ in marks] == [stream_key(1, "/a"), stream_key(2, "/b")]
    back = stale_rows([value for _, value in marks])
    got = sorted(zip(back.node_id, back.source_id, back.created, back.property, back.kind, strict=True))
    want = sorted(zip(rows.node_id, rows.source_id, rows.created, rows.property, rows.kind, strict=True))
    assert got == want
