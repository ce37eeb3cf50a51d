"""The running sums (processors/rollup_incremental.py) against the reference: a series seeded from
what `rollup_all` stores for its first points, then given the rest in steps, emits at each step
every row the step changed, each bit for bit the row `rollup_all` computes over all points so
far; and anything but an append is refused."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.rollup import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    Periodicity,
    RawPoint,
    RollupKind,
    RollupRow,
    Tolerances,
    bucket_bounds,
    rollup_all,
)
from processors.rollup_incremental import NotAnAppend, SeriesState, prefix_ranges, seed_from_rows
from tests.unit.test_rollup import ms

Key = tuple[Periodicity, int, str, str, RollupKind, int]
ZONES = ["UTC", "Europe/Berlin", "Asia/Kathmandu", "America/St_Johns", "Australia/Lord_Howe"]
TOL = Tolerances(clock_ms=HOUR_MS, lookback_ms=3 * HOUR_MS)  # short, so every branch is drawn
KEYS: dict[RollupKind, tuple[int, str, str, RollupKind]] = {k: (7, "/m", f"x{k}", k) for k in "iaps"}  # type: ignore[misc]
# around a spring-forward (Europe/Berlin 2024-03-31, Lord Howe 2024-04-07) and a month's end
STARTS = [ms("2024-03-30T20:00:00Z"), ms("2024-04-06T13:00:00Z"), ms("2024-12-31T21:50:00Z")]


def point(kind: RollupKind, t: int, v: float | None, text: str | None, tags: frozenset[str] = frozenset()) -> RawPoint:
    return RawPoint(t, f"x{kind}", kind, None if kind == "s" else v, text if kind == "s" else None, tags=tags)


def reference(points: Sequence[RawPoint], tz: str, tol: Tolerances) -> dict[Key, RollupRow]:
    lo, hi = points[0].created_ms, points[-1].created_ms + 1
    levels = rollup_all(points, [], lo, hi, tz, tol, 7, "/m")
    return {r.key(): r for rows in levels.values() for r in rows}


def seeded(kind: RollupKind, points: Sequence[RawPoint], tz: str, tol: Tolerances) -> SeriesState:
    """What the pipeline seeds a series with: its last point, that half hour's values added, and
    the stored rows `seed_rows_wanted` names."""
    stored = reference(points, tz, tol)
    counted = [p for p in points if (p.text if kind == "s" else p.value) is not None]
    last = counted[-1]
    lo, hi = bucket_bounds(last.created_ms, "halfhour", tz)
    total = 0.0
    for p in counted:
        if lo <= p.created_ms < hi and p.value is not None:
            total += p.value
    # the rows of each open bucket's level below, to the open child
    wanted = [(source, a, c) for _per, source, a, c in prefix_ranges(last.created_ms, tz)]
    rows = [r for r in stored.values() if any(r.periodicity == s and a <= r.ts_start_ms <= c for s, a, c in wanted)]
    return seed_from_rows(KEYS[kind], tz, (last.created_ms, last.value or 0.0), total, rows, tol)


def exact(rows: Sequence[RollupRow]) -> list[str]:
    # repr: == lets 0.0 equal -0.0 and would hide a sum in another order
    return [repr(r) for r in rows]


def check(kind: RollupKind, points: list[RawPoint], cut: int, steps: Sequence[int], tz: str) -> int:
    """Seed from points[:cut], then append the rest in `steps` sized pieces; returns rows emitted."""
    state = seeded(kind, points[:cut], tz, TOL)
    before = reference(points[:cut], tz, TOL)
    done, emitted = cut, 0
    for size in steps:
        batch = points[done : done + size]
        if not batch:
            break
        done += len(batch)
        tags = [p.tags for p in batch] if any(p.tags for p in batch) else None
        got = state.append([p.created_ms for p in batch], [p.value for p in batch], [p.text for p in batch], tags)
        after = reference(points[:done], tz, TOL)
        assert exact(got) == exact([after[r.key()] for r in got])
        changed = {k for k, r in after.items() if k not in before or repr(before[k]) != repr(r)}
        assert changed <= {r.key() for r in got}, sorted(changed - {r.key() for r in got})
        emitted += len(got)
        before = after
    return emitted


GAPS = st.sampled_from([1, 1_000, 59_999, 60_000, 5 * MINUTE_MS, 17 * MINUTE_MS, 30 * MINUTE_MS, 31 * MINUTE_MS])
GAPS_ALL = st.one_of(
    GAPS,
    st.sampled_from([HOUR_MS, HOUR_MS + 1, 2 * HOUR_MS, 3 * HOUR_MS, 3 * HOUR_MS + 1, DAY_MS, 9 * DAY_MS]),
    st.integers(1, 4 * HOUR_MS),
)
VALUES = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from([0.0, -0.0, 0.1, 0.2, 0.3, 1e16, 1.0]),
    st.none(),
)


@st.composite
def series(draw: st.DrawFn) -> tuple[RollupKind, list[RawPoint], int, list[int], str]:
    kind: RollupKind = draw(st.sampled_from(["i", "a", "p", "s"]))
    tz = draw(st.sampled_from(ZONES))
    t = draw(st.sampled_from(STARTS)) + draw(st.integers(0, HOUR_MS))
    n = draw(st.integers(2, 40))
    points: list[RawPoint] = []
    for k in range(n):
        if k:
            t += draw(GAPS_ALL)
        if kind == "a":
            v: float | None = draw(st.one_of(st.floats(0, 1e6, allow_nan=False), st.none()))
        else:
            v = draw(VALUES)
        text = draw(st.one_of(st.sampled_from(["on", "off", "auto"]), st.none()))
        tags = draw(st.sampled_from([frozenset(), frozenset(), frozenset({"x"}), frozenset({"x", "y"})]))
        points.append(point(kind, t, v, text, tags))
    counted = [k for k, p in enumerate(points) if (p.text if kind == "s" else p.value) is not None]
    if not counted:
        points[0] = point(kind, points[0].created_ms, 1.0, "on")
        counted = [0]
    cut = draw(st.sampled_from(counted)) + 1
    steps = draw(st.lists(st.integers(1, 6), min_size=1, max_size=12))
    return kind, points, cut, steps, tz


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(series())
def test_appends_equal_the_reference_bit_for_bit(drawn: tuple[RollupKind, list[RawPoint], int, list[int], str]) -> None:
    check(*drawn)


@pytest.mark.parametrize("kind", ["i", "a", "p", "s"])
@pytest.mark.parametrize("tz", ["Europe/Berlin", "Asia/Kathmandu"])
def test_a_fleet_stream_a_reading_a_minute_across_a_day_and_a_month(kind: RollupKind, tz: str) -> None:
    """Every step one reading, across half hours, hours, a day, a month's end and a spring
    forward: each row of every level as the reference computes it."""
    t0 = ms("2024-03-31T00:31:00Z")
    points = [
        point(kind, t0 + k * 3 * MINUTE_MS, 1_000.0 + k * 0.1 + (k % 7), "on" if k % 3 else "off") for k in range(150)
    ]
    points += [point(kind, points[-1].created_ms + DAY_MS + k * 17 * MINUTE_MS, 2e3 + k, "auto") for k in range(12)]
    assert check(kind, points, 1, [1] * 150 + [3] * 4, tz) > 150 * 5


def test_the_rows_of_every_level_are_emitted_for_one_reading() -> None:
    """A reading a minute into a new half hour of an accumulating meter changes the half hour it
    left (its clock share) and the one it opens, and every level above both."""
    t0 = ms("2024-05-01T11:59:30Z")
    points = [point("a", t0 + k * MINUTE_MS, 10.0 * k, None) for k in range(2)]
    state = seeded("a", points[:1], "UTC", TOL)
    got = state.append([points[1].created_ms], [points[1].value], [None])
    assert [(r.periodicity, r.ts_start_ms) for r in got] == [
        ("halfhour", ms("2024-05-01T11:30:00Z")),
        ("halfhour", ms("2024-05-01T12:00:00Z")),
        ("hour", ms("2024-05-01T11:00:00Z")),
        ("hour", ms("2024-05-01T12:00:00Z")),
        ("day", ms("2024-05-01T00:00:00Z")),
        ("week", ms("2024-04-29T00:00:00Z")),
        ("month", ms("2024-05-01T00:00:00Z")),
        ("year", ms("2024-01-01T00:00:00Z")),
    ]
    assert (got[0].diff, got[1].diff, got[0].read_diff, got[1].read_diff) == (5.0, 5.0, 0.0, 10.0)


@pytest.mark.parametrize(
    "t, v",
    [
        (ms("2024-05-01T12:00:00Z"), 5.0),  # the last point again (a correction)
        (ms("2024-05-01T11:00:00Z"), 5.0),  # late
        (ms("2024-05-01T12:05:00Z"), float("nan")),
    ],
)
def test_anything_but_an_append_is_refused(t: int, v: float) -> None:
    points = [point("i", ms("2024-05-01T11:50:00Z") + k * 5 * MINUTE_MS, 1.0, None) for k in range(3)]
    state = seeded("i", points, "UTC", TOL)
    with pytest.raises(NotAnAppend):
        state.append([t], [v], [None])


def test_a_seed_without_the_open_buckets_children_is_refused() -> None:
    """The stored rows must reach the last point's buckets: a seed missing the hour's half hour
    (a store that lags, or a read cut short) would start the prefix wrong."""
    points = [point("i", ms("2024-05-01T11:50:00Z") + k * 5 * MINUTE_MS, 1.0, None) for k in range(3)]
    stored = reference(points, "UTC", TOL)
    rows = [r for r in stored.values() if r.periodicity != "hour"]
    with pytest.raises(NotAnAppend):
        seed_from_rows(KEYS["i"], "UTC", (points[-1].created_ms, 1.0), 2.0, rows, TOL)
