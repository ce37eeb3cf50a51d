"""The running rollups' table (processors/rollup_running.py) against the reference: several series
in one table, seeded as the pipeline seeds them, given their points in steps all at once; every
row of every step bit for bit the row `rollup_all` computes over the points so far, every
changed row among them; and what is not an append sends its stream back to the store."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.rollup import MINUTE_MS, RawPoint, RollupKind, RollupRow, bucket_bounds, zone
from processors.rollup_incremental import Figures, _absorb, prefix_ranges
from processors.rollup_running import (
    KIND_CODES,
    NO_READING,
    FreshSeeds,
    NewPoints,
    RollupColumns,
    RunningRollups,
    as_rows,
    level_figs,
    pair_reaches_back,
)
from sinks.rollups import rollup_arrow, rollup_columns_arrow
from tests.unit.test_rollup import ms
from tests.unit.test_rollup_incremental import TOL, exact, point, reference, seeded, series

Drawn = tuple[RollupKind, list[RawPoint], int, list[int], str]


def new_points(kind: RollupKind, batch: Sequence[RawPoint]) -> NewPoints:
    value = [np.nan if p.value is None else p.value for p in batch]
    return NewPoints(
        f"x{kind}",
        kind,
        np.asarray([p.created_ms for p in batch], np.int64),
        np.asarray(value, np.float64),
        np.asarray([(p.text if kind == "s" else p.value) is None for p in batch], np.bool_),
        [p.text or "" for p in batch] if kind == "s" else None,
        [p.tags for p in batch] if any(p.tags for p in batch) else None,
    )


def run(drawn: Sequence[Drawn]) -> tuple[int, int]:
    """Each drawn series a stream of its own in one table; returns rows emitted, and the series
    steps that went one series at a time."""
    table = RunningRollups(1_000)
    slots: dict[tuple[int, str], dict[str, int]] = {}
    done: dict[int, int] = {}
    before: dict[int, dict[object, RollupRow]] = {}
    for n, (kind, points, cut, _steps, tz) in enumerate(drawn):
        state = seeded(kind, points[:cut], tz, TOL)
        state.key = (n, "/m", f"x{kind}", kind)
        slots[(n, "/m")] = table.store({f"x{kind}": state})
        done[n] = cut
        before[n] = {k[:1] + k[3:]: r for k, r in reference(points[:cut], tz, TOL).items()}
    emitted = one_at_a_time = 0
    for step in range(max(len(d[3]) for d in drawn)):
        steps = {}
        for n, (kind, points, _cut, sizes, _tz) in enumerate(drawn):
            if step < len(sizes) and done[n] < len(points):
                batch = points[done[n] : done[n] + sizes[step]]
                steps[(n, "/m")] = (slots[(n, "/m")], [new_points(kind, batch)])
                done[n] += len(batch)
        if not steps:
            break
        cols, fell = table.append(steps, TOL)
        assert not fell  # every drawn point appends
        got = as_rows(cols)
        emitted += len(got)
        # the insert's table of the arrays: the table of the same rows as objects
        by_columns = as_rows(RollupColumns(cols.chunks))
        assert rollup_columns_arrow(cols).equals(rollup_arrow([*by_columns, *cols.rows]))
        one_at_a_time = table.one_at_a_time
        by_stream: dict[int, list[RollupRow]] = {}
        for r in got:
            by_stream.setdefault(r.node_id, []).append(r)
        for n, _source in steps:
            kind, points, _cut, _sizes, tz = drawn[n]
            after = {k[:1] + k[3:]: r for k, r in reference(points[: done[n]], tz, TOL).items()}
            mine = by_stream.get(n, [])
            key = lambda r: (r.periodicity, r.property, r.kind, r.ts_start_ms)  # noqa: E731
            want = [after[key(r)] for r in mine]
            assert exact([_renamed(r, 7) for r in mine]) == exact(want)
            changed = {k for k, r in after.items() if k not in before[n] or repr(before[n][k]) != repr(r)}
            assert changed <= {key(r) for r in mine}, sorted(changed - {key(r) for r in mine})
            before[n] = after
    return emitted, one_at_a_time


def _renamed(r: RollupRow, node: int) -> RollupRow:
    return RollupRow(
        r.periodicity, node, r.source_id, r.property, r.kind, r.ts_start_ms, r.ts_end_ms, r.count, r.avg, r.min,
        r.max, r.diff, r.read_diff, r.read_start, r.read_end, r.mode, r.status_counts, r.tags,
    )  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(series(), min_size=1, max_size=4))
def test_a_table_of_series_equals_the_reference_bit_for_bit(drawn: list[Drawn]) -> None:
    run(drawn)


@pytest.mark.parametrize(("tz", "per_step"), [("UTC", 1), ("Asia/Kathmandu", 1), ("Europe/Berlin", 7)])
def test_a_fleet_a_reading_a_minute_goes_by_columns(tz: str, per_step: int) -> None:
    """Four series of every kind, a reading a minute for three hours and a gap, one or a few a step: the
    rows of every level, each step, all by columns (opening the next half hour, hour and day
    too, within a step as well; tags as a datastream template gives every sample)."""
    t0 = ms("2024-03-31T00:31:00Z")
    drawn: list[Drawn] = []
    tags = frozenset({"energy", "power"}) if per_step > 1 else frozenset()
    for kind in ("i", "a", "p", "s"):
        # and 80 minutes without a reading (longer than the clock tolerance)
        points = [
            point(kind, t0 + (k + 80 * (k >= 120)) * MINUTE_MS, 1e3 + k * 0.1 + k % 7, "on" if k % 3 else "off", tags)
            for k in range(180)
        ]
        drawn.append((kind, points, 1, [per_step] * (179 // per_step + 1), tz))
    emitted, one_at_a_time = run(drawn)
    assert emitted >= 4 * (179 // per_step) * 6 and one_at_a_time == 0


def test_what_is_not_an_append_sends_the_stream_back_and_writes_none_of_its_rows() -> None:
    """Of two streams in a step, the one with a point at its series' last goes back to the store
    (none of its rows), the other's rows are there."""
    t0 = ms("2024-05-01T11:50:00Z")
    table = RunningRollups(100)
    slots = {}
    for n in (1, 2):
        points = [point("i", t0 + k * 5 * MINUTE_MS, 1.0, None) for k in range(3)]
        state = seeded("i", points, "UTC", TOL)
        state.key = (n, "/m", "xi", "i")
        slots[(n, "/m")] = table.store({"xi": state})
    late = point("i", t0 + 10 * MINUTE_MS, 5.0, None)  # the last point again
    fresh = point("i", t0 + 12 * MINUTE_MS, 5.0, None)
    cols, fell = table.append(
        {
            (1, "/m"): (slots[(1, "/m")], [new_points("i", [late])]),
            (2, "/m"): (slots[(2, "/m")], [new_points("i", [fresh])]),
        },
        TOL,
    )
    assert fell == {(1, "/m")}
    assert {r.node_id for r in as_rows(cols)} == {2} and len(as_rows(cols)) == 6


def test_taken_slots_come_back_only_if_put_in_the_same_generation() -> None:
    """A step takes a stream's slots; a rebalance (clear) while it runs voids its put."""
    table = RunningRollups(100)
    points = [point("i", ms("2024-05-01T11:50:00Z") + k * MINUTE_MS, 1.0, None) for k in range(3)]
    state = seeded("i", points, "UTC", TOL)
    table.put({(7, "/m"): table.store({"xi": state})}, table.generation)
    assert len(table) == 1
    generation = table.generation
    taken = table.take([(7, "/m")])
    assert len(table) == 0 and taken
    table.clear()
    table.put(taken, generation)
    assert len(table) == 0 and table.take([(7, "/m")]) == {}


# -- seeded fresh at a half hour's start (a stream's first step: `store_fresh`) -----------------


def fresh_seed(
    n: int, kind: RollupKind, points: Sequence[RawPoint], cut: int, tz: str
) -> tuple[FreshSeeds, int] | None:
    """What the worker seeds a series with when its first new point is points[cut]: X the half
    hour holding it, nothing of X, the last reading before X (accumulating), each coarser level's
    children before X's from the stored rows (those of points[:cut]); and where the appends
    start (the first point from X on). None where the worker sends the stream to the store: the
    pair into X's first reading is new and reaches back before X."""
    x_lo = bucket_bounds(points[cut].created_ms, "halfhour", tz)[0]
    counted = [k for k, p in enumerate(points) if (p.text if kind == "s" else p.value) is not None]
    before = [k for k in counted if points[k].created_ms < x_lo and points[k].created_ms >= x_lo - TOL.lookback_ms]
    after = [k for k in counted if points[k].created_ms >= x_lo]
    last_t, last_v = NO_READING, float("nan")
    if kind == "a" and before:
        last_t, last_v = points[before[-1]].created_ms, points[before[-1]].value or 0.0
    if (
        kind == "a"
        and after
        and after[0] >= cut
        and pair_reaches_back(last_t if before else None, points[after[0]].created_ms, x_lo, TOL)
    ):
        return None
    stored = reference(points[:cut], tz, TOL) if cut else {}
    z = zone(tz)
    kinds = np.asarray([KIND_CODES[kind]], np.int8)
    levels = []
    for per, source, lo, child in prefix_ranges(x_lo, z):
        f = Figures(*bucket_bounds(lo, per, z))
        for r in sorted(
            (r for r in stored.values() if r.periodicity == source and lo <= r.ts_start_ms < child),
            key=lambda r: r.ts_start_ms,
        ):
            _absorb(f, r)
        found = {0: (f.count, f.total, f.low, f.high, f.read_diff, f.read_start, f.read_end, f.status, f.tags)}
        levels.append(level_figs(np.asarray([f.lo]), np.asarray([f.hi]), kinds, found))
    seeds = FreshSeeds(
        np.asarray([n]),
        ["/m"],
        [f"x{kind}"],
        [kind],
        [z],
        np.asarray([x_lo]),
        np.asarray([last_t]),
        np.asarray([last_v]),
        levels,
    )
    start = next(k for k, p in enumerate(points) if p.created_ms >= x_lo)
    return seeds, start


def run_fresh(drawn: Sequence[Drawn]) -> tuple[int, int]:
    """Each drawn series a stream of its own, seeded fresh where its new points start and given
    the points from X on in steps (the first replays what the store holds of X): every row
    emitted equals the reference over the points so far, every changed row is emitted. A series
    whose step would go one series at a time (`SeriesState` cannot extend a fresh series'
    placeholder) falls back, none of its rows written, and is given nothing more (the worker
    sends it to the store). Returns the series seeded and those that fell back."""
    table = RunningRollups(1_000)
    slots: dict[tuple[int, str], dict[str, int]] = {}
    done: dict[int, int] = {}
    before: dict[int, dict[object, RollupRow]] = {}
    gone: set[int] = set()
    for n, (kind, points, cut, _steps, tz) in enumerate(drawn):
        if cut >= len(points):
            continue
        got = fresh_seed(n, kind, points, cut, tz)
        if got is None:
            continue
        seeds, start = got
        slots[(n, "/m")] = {f"x{kind}": table.store_fresh(seeds)[0]}
        done[n] = start
        before[n] = {k[:1] + k[3:]: r for k, r in reference(points[:cut], tz, TOL).items()} if cut else {}
    seeded = len(done)
    for step in range(max(len(d[3]) for d in drawn)):
        steps = {}
        for n, (kind, points, _cut, sizes, _tz) in enumerate(drawn):
            if n in done and step < len(sizes) and done[n] < len(points):
                batch = points[done[n] : done[n] + sizes[step] + (drawn[n][2] - done[n] if step == 0 else 0)]
                steps[(n, "/m")] = (slots[(n, "/m")], [new_points(kind, batch)])
                done[n] += len(batch)
        if not steps:
            break
        cols, fell = table.append(steps, TOL)
        for stream in fell:
            gone.add(stream[0])
            del done[stream[0]]
        by_stream: dict[int, list[RollupRow]] = {}
        for r in as_rows(cols):
            by_stream.setdefault(r.node_id, []).append(r)
        assert not set(by_stream) & gone
        for n, _source in steps:
            if n in gone:
                continue
            kind, points, _cut, _sizes, tz = drawn[n]
            after = {k[:1] + k[3:]: r for k, r in reference(points[: done[n]], tz, TOL).items()}
            mine = by_stream.get(n, [])
            key = lambda r: (r.periodicity, r.property, r.kind, r.ts_start_ms)  # noqa: E731
            assert exact([_renamed(r, 7) for r in mine]) == exact([after[key(r)] for r in mine])
            changed = {k for k, r in after.items() if k not in before[n] or repr(before[n][k]) != repr(r)}
            assert changed <= {key(r) for r in mine}, sorted(changed - {key(r) for r in mine})
            before[n] = after
    return seeded, len(gone)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(series(), min_size=1, max_size=4))
def test_series_seeded_fresh_at_a_half_hour_equal_the_reference_bit_for_bit(drawn: list[Drawn]) -> None:
    seeded, fell = run_fresh(drawn)
    assert fell <= seeded


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kathmandu", "Europe/Berlin"])
def test_a_fleet_seeded_fresh_goes_by_columns(tz: str) -> None:
    """Series of every kind with a history, seeded fresh at the half hour of their first new
    reading (none of them before it: a stream's first step; or in the middle of a half hour), then
    a reading a minute: every row equal to the reference, none one series at a time."""
    t0 = ms("2024-03-31T00:31:00Z")
    drawn: list[Drawn] = []
    for cut in (0, 1, 47, 88):
        for kind in ("i", "a", "p", "s"):
            points = [
                point(kind, t0 + k * MINUTE_MS, 1e3 + k * 0.1 + k % 7, "on" if k % 3 else "off") for k in range(120)
            ]
            drawn.append((kind, points, cut, [1 + k % 3 for k in range(60)], tz))
    assert run_fresh(drawn) == (16, 0)


def test_a_fresh_series_without_a_counted_point_writes_nothing() -> None:
    """A series seeded fresh whose step holds no counted point (a reading without a value) has no
    row to write: its placeholder before X is never one."""
    table = RunningRollups(100)
    t0 = ms("2024-05-01T11:50:00Z")
    x_lo = bucket_bounds(t0, "halfhour", "UTC")[0]
    kinds = np.asarray([0], np.int8)
    levels = [
        level_figs(np.asarray([lo]), np.asarray([hi]), kinds, {})
        for lo, hi in (bucket_bounds(x_lo, per, "UTC") for per in ("hour", "day", "week", "month", "year"))
    ]
    seeds = FreshSeeds(
        np.asarray([1]),
        ["/m"],
        ["xi"],
        ["i"],
        [zone("UTC")],
        np.asarray([x_lo]),
        np.asarray([NO_READING]),
        np.asarray([np.nan]),
        levels,
    )
    slots = {"xi": table.store_fresh(seeds)[0]}
    cols, fell = table.append({(1, "/m"): (slots, [new_points("i", [point("i", t0, None, None)])])}, TOL)
    assert not fell and as_rows(cols) == []
    cols, fell = table.append({(1, "/m"): (slots, [new_points("i", [point("i", t0 + 1, 2.5, None)])])}, TOL)
    assert not fell and [(r.periodicity, r.count, r.avg) for r in as_rows(cols)] == [
        (per, 1, 2.5) for per in ("halfhour", "hour", "day", "week", "month", "year")
    ]
