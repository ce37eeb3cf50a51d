"""What sends a stream's first step to the store instead of seeding running rollups
(pipeline/worker/rollups.py `_ColdSeries`): pure rules over the points the step read, each shown
refusing exactly the stream that breaks it."""

from __future__ import annotations

import pyarrow as pa

from pipeline.worker.rollups import _Cold, _ColdSeries
from processors.rollup import DEFAULT_TOLERANCES, HOUR_MS, MINUTE_MS
from processors.rollup_running import MAX_POINTS
from processors.stale_marks import SpanColumns
from sinks.rollups import _POINTS, PointColumns

X = 1_700_000_000_000 // (30 * MINUTE_MS) * (30 * MINUTE_MS)  # a half hour's start (UTC)

Point = tuple[int, int, str, str, float | None, str]


def series(points: list[Point]) -> _ColdSeries:
    """Points (q, t, property, kind, value, text), sorted as `read_points` sorts them."""
    points = sorted(points, key=lambda p: (p[0], p[2], p[3], p[1]))
    columns = list(zip(*points, strict=True))
    table = pa.table(
        [*(pa.array(c) for c in columns), pa.array([[] for _ in points], pa.list_(pa.string()))],
        schema=_POINTS,
    )
    return _ColdSeries(PointColumns.of(table))


def plan(*firsts: int) -> list[_Cold]:
    return [_Cold((q + 1, "/m"), "UTC", first, first + 10 * MINUTE_MS, X) for q, first in enumerate(firsts)]


def test_a_dense_stream_and_a_property_of_two_kinds_are_refused() -> None:
    dense = [(0, X + k, "w", "i", 1.0, "") for k in range(MAX_POINTS + 1)]
    sparse = [(1, X + k * MINUTE_MS, "w", "i", 1.0, "") for k in range(MAX_POINTS)]
    twice = [(2, X, "w", "i", 1.0, ""), (2, X + MINUTE_MS, "w", "a", 5.0, "")]
    read = series(dense + sparse + twice)
    assert read.dense() == {0}
    assert read.two_kinds() == {2}


def test_a_change_gone_or_without_a_value_is_refused_a_status_always_counts() -> None:
    read = series(
        [
            (0, X + MINUTE_MS, "w", "i", 1.0, ""),
            (1, X + MINUTE_MS, "w", "i", None, ""),  # the changed reading lost its value
            (2, X + MINUTE_MS, "mode", "s", None, ""),  # a status: counted whatever its text
            (3, X + MINUTE_MS, "w", "i", 1.0, ""),
        ]
    )
    spans = SpanColumns()
    for q in range(4):
        prop, kind = ("mode", "s") if q == 2 else ("w", "i")
        last = X + 2 * MINUTE_MS if q == 3 else X + MINUTE_MS  # stream 4's last change is gone
        spans.add(q + 1, "/m", [prop], [kind], [X + MINUTE_MS], [last])
    spans_of = {(q + 1, "/m"): [q] for q in range(4)}
    assert read.changes_missing(plan(*[X + MINUTE_MS] * 4), spans_of, spans) == {1, 3}


def test_a_new_pair_into_x_reaching_back_is_refused_an_old_one_or_a_far_one_not() -> None:
    tol = DEFAULT_TOLERANCES
    read = series(
        [
            (0, X + 5 * MINUTE_MS, "wh", "a", 10.0, ""),  # new, the reading before 10 minutes back
            (1, X + 5 * MINUTE_MS, "wh", "a", 10.0, ""),  # not new: the first change is later
            (1, X + 9 * MINUTE_MS, "wh", "a", 11.0, ""),
            (2, X + 5 * MINUTE_MS, "wh", "a", 10.0, ""),  # new, the reading before beyond the clock
            (3, X, "wh", "a", 10.0, ""),  # new, exactly at X, chained: X's reading difference
        ]
    )
    cold = plan(X + 5 * MINUTE_MS, X + 9 * MINUTE_MS, X + 5 * MINUTE_MS, X)
    # by series (one each here), the reading before X
    before = {
        0: (X - 5 * MINUTE_MS, 9.0),
        1: (X - 5 * MINUTE_MS, 9.0),
        2: (X - 2 * HOUR_MS, 9.0),
        3: (X - 2 * HOUR_MS, 9.0),
    }
    assert read.reaching_back([0, 1, 2, 3], before, cold, tol) == {0, 3}
    assert read.reaching_back([0, 1, 2, 3], {}, cold, tol) == set()  # nothing before X: a stream's first
    # the look-back before X of each accumulating series
    assert read.before_x([0], cold, tol.lookback_ms) == [(0, 1, "/m", "wh", X - tol.lookback_ms, X)]
