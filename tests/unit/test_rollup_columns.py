"""The column recompute (processors/rollup_columns.py) against the reference `recompute`: equal
row for row, float for float, on random streams (shuffled, duplicated, rewritten, resets, DST,
every tolerance) and on Hypothesis-drawn ones."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.rollup import (
    HOUR_MS,
    MINUTE_MS,
    Periodicity,
    RawPoint,
    ResetMarker,
    RollupRow,
    Tolerances,
    recompute,
)
from processors.rollup_columns import Series, recompute_series, series_from_points
from tests.unit.test_rollup import ANCHORS, TOLERANCES, ms, random_stream, span

HALF = 30 * MINUTE_MS


def same(
    points: list[RawPoint], resets: list[ResetMarker], lo: int, hi: int, per: Periodicity, tz: str, tol: Tolerances
) -> list[RollupRow]:
    want = recompute(points, resets, lo, hi, per, tz, tol, 7, "/m")
    got = recompute_series(series_from_points(points), resets, lo, hi, per, tz, tol, 7, "/m")
    assert got == want
    # bit for bit: == lets 0.0 equal -0.0 and would hide a sum in another order
    assert [repr(r) for r in got] == [repr(r) for r in want]
    return got


@pytest.mark.parametrize("seed", range(60))
def test_random_streams_equal_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    tz, points, resets, tol = random_stream(rng)
    if not points:
        return
    lo, hi = span(points, resets)
    # the whole stream, and windows cut at random inside it (edge readings outside the window)
    same(points, resets, lo, hi, "halfhour", tz, tol)
    same(points, [], lo, hi, "halfhour", tz, tol)  # no resets: every accumulating series fast
    same(points, [], lo, hi, "hour", tz, tol)
    for _ in range(3):
        a, b = sorted(rng.randint(lo - HOUR_MS, hi + HOUR_MS) for _ in range(2))
        same(points, [], a, b + 1, "halfhour", tz, tol)
        same(points, resets, a, b + 1, "halfhour", tz, tol)


def test_the_fast_path_is_taken_and_the_reference_is_not_needed() -> None:
    """A plain stream: every series passes `fast`, and the rows are the reference's."""
    t0 = ms("2024-03-10T04:00:00Z")
    points = []
    for n in range(4000):
        t = t0 + n * 1000
        points += [
            RawPoint(t, "watts", "i", float(n % 97) / 3),
            RawPoint(t, "wh", "a", 1e6 + n * 0.1),
            RawPoint(t, "mode", "s", text="auto" if n % 3 else "off"),
        ]
    series = series_from_points(points)
    assert all(s.fast() for s in series)
    rows = same(points, [], t0 + 7 * 60_000, t0 + 3_000_000, "halfhour", "America/New_York", Tolerances())
    assert {r.kind for r in rows} == {"i", "a", "s"}


def test_a_nan_or_two_points_at_one_instant_go_to_the_reference() -> None:
    t0 = ms("2024-01-01T00:00:00Z")
    nan = Series("w", "i", np.array([t0, t0 + 1], dtype=np.int64), np.array([1.0, np.nan]), np.array([False, False]))
    twice = Series("w", "i", np.array([t0, t0], dtype=np.int64), np.array([1.0, 2.0]), np.array([False, False]))
    assert not nan.fast() and not twice.fast()
    rows = recompute_series([nan], [], t0, t0 + HALF, "halfhour", "UTC")
    want = recompute(nan.points(), [], t0, t0 + HALF, "halfhour", "UTC")
    assert repr(rows) == repr(want) and str(rows[0].avg) == "nan"  # NaN != NaN: compare the text


@st.composite
def streams(draw: st.DrawFn) -> tuple[str, list[RawPoint], list[ResetMarker], Tolerances, int, int]:
    tz, anchor = draw(st.sampled_from(ANCHORS))
    base = ms(anchor) - 3 * HOUR_MS
    times = draw(st.lists(st.integers(0, 8 * HOUR_MS), min_size=1, max_size=60))
    points: list[RawPoint] = []
    meter = 0.0
    for t in sorted(times):
        step = draw(st.floats(-5, 1e4, allow_nan=False))
        meter += step
        kind = draw(st.sampled_from(["i", "a", "s", "p", "none"]))
        tags = frozenset(draw(st.sets(st.sampled_from(["x", "y"]), max_size=2)))
        if kind == "s":
            points.append(RawPoint(base + t, "st", "s", None, draw(st.sampled_from(["a", "b", "c"])), tags=tags))
        elif kind == "none":
            points.append(RawPoint(base + t, "wh", "a", None, tags=tags))
        else:
            value = meter if kind == "a" else draw(st.floats(-1e6, 1e6, allow_nan=False))
            points.append(RawPoint(base + t, {"i": "w", "a": "wh", "p": "n"}[kind], kind, value, tags=tags))
    resets: list[ResetMarker] = []
    if draw(st.booleans()):
        at = base + draw(st.integers(0, 8 * HOUR_MS))
        resets.append(ResetMarker(at, {"wh": meter + 1}, {"wh": 0.0}))
    lo = base + draw(st.integers(-HOUR_MS, 8 * HOUR_MS))
    hi = lo + draw(st.integers(1, 6 * HOUR_MS))
    return tz, points, resets, draw(st.sampled_from(TOLERANCES)), lo, hi


@settings(max_examples=300, deadline=None)
@given(streams(), st.sampled_from(["halfhour", "hour", "day"]))
def test_hypothesis_streams_equal_the_reference(
    stream: tuple[str, list[RawPoint], list[ResetMarker], Tolerances, int, int],
    per: Periodicity,
) -> None:
    tz, points, resets, tol, lo, hi = stream
    same(points, resets, lo, hi, per, tz, tol)
