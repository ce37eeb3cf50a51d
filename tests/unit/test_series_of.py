"""`sinks.rollups._series_of` cuts a set-wise read into series and finds `Series.fast()` of all of
them at once (issue 13): the flag it sets is the one each series computes alone."""

from __future__ import annotations

import dataclasses
import math

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from sinks.rollups import _series_of

# one point: (window, property, kind, created, value or None)
point = st.tuples(
    st.integers(0, 2),
    st.sampled_from(["watts", "wattHours", "mode"]),
    st.sampled_from(["i", "a", "s"]),
    st.integers(0, 6),
    st.one_of(st.none(), st.floats(allow_infinity=False), st.just(math.nan)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(point, max_size=40))
def test_the_fast_flag_of_each_series_is_its_own(points: list[tuple[int, str, str, int, float | None]]) -> None:
    points.sort(key=lambda p: (p[0], p[1], p[2], p[3]))  # the read's order: q, p, k, t (ties kept)
    table = pa.table(
        {
            "q": pa.array([p[0] for p in points], pa.uint32()),
            "t": pa.array([p[3] for p in points], pa.int64()),
            "p": pa.array([p[1] for p in points], pa.string()),
            "k": pa.array([p[2] for p in points], pa.string()),
            "v": pa.array([p[4] for p in points], pa.float64()),  # a status may carry a number too
            "x": pa.array(["auto" if p[2] == "s" else "" for p in points], pa.string()),
            "g": pa.array([[] for _ in points], pa.list_(pa.string())),
        }
    )
    cut = _series_of(table)
    assert sum(len(s) for _, s in cut) == len(points)
    for _, s in cut:
        assert s.known_fast is not None
        assert s.known_fast == dataclasses.replace(s, known_fast=None).fast(), s
