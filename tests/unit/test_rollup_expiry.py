"""A recompute behind the retention horizon never erases or shrinks stored rollups (issue 12):
the raw rows it would read may have expired."""

from __future__ import annotations

from dataclasses import replace

from pipeline.worker.rollups import Refresh, _Plan
from processors.rollup import DEFAULT_TOLERANCES, PERIODICITIES, RawPoint, RollupRow, combine, recompute, zone
from processors.rollup_columns import series_from_points

UTC = zone("UTC")
T0 = 1_672_531_200_000  # 2023-01-01T00:00:00Z
HALF = 1_800_000


def _stored(n_points: int) -> list[RollupRow]:
    """What the first computation stored for one half hour of 'watts' (n readings), every level."""
    points = [RawPoint(T0 + k * 60_000, "watts", "i", float(k), None, 0, frozenset()) for k in range(n_points)]
    half = recompute(points, [], T0, T0 + HALF, "halfhour", UTC, DEFAULT_TOLERANCES, 1, "/m")
    rows = list(half)
    for per in ("hour", "day", "week", "month", "year"):
        rows += combine(half, per, UTC)
    return rows


def _refresh(
    points: list[RawPoint], stored: list[RollupRow], horizon_ms: int | None
) -> tuple[list[RollupRow], list[RollupRow]]:
    plan = _Plan(1, "/m", UTC, windows=[(T0, T0 + HALF)], horizon_ms=horizon_ms)
    plan.fill(iter([series_from_points(points)]), iter([[]]), DEFAULT_TOLERANCES)
    out = Refresh()
    plan.halfhours(stored, out)
    # every coarser bucket holding the half hour is left to the store to combine again
    assert {per: len(buckets) for per, buckets in out.cascade.items()} == {p: 1 for p in PERIODICITIES[1:]}
    return out.rows, out.tombstones


def test_expired_half_hour_found_empty_is_kept_not_tombstoned() -> None:
    stored = _stored(10)
    rows, tombstones = _refresh([], stored, horizon_ms=T0 + HALF)
    assert tombstones == []
    assert [(r.periodicity, r.count) for r in rows] == [("halfhour", 10)]


def test_expired_half_hour_with_fewer_samples_keeps_the_stored_figures() -> None:
    stored = _stored(10)
    late = [RawPoint(T0 + 20 * 60_000, "watts", "i", 99.0, None, 0, frozenset())]  # arrived after the rest expired
    rows, tombstones = _refresh(late, stored, horizon_ms=T0)
    assert tombstones == []
    half = next(r for r in rows if r.periodicity == "halfhour")
    assert half == next(r for r in stored if r.periodicity == "halfhour")


def test_expired_half_hour_still_complete_in_raw_is_recomputed() -> None:
    # a backfill in two batches within the grace period: all raw rows present, the count grows
    stored = _stored(10)
    points = [RawPoint(T0 + k * 60_000, "watts", "i", float(k), None, 0, frozenset()) for k in range(20)]
    rows, tombstones = _refresh(points, stored, horizon_ms=T0)
    assert tombstones == []
    assert [(r.periodicity, r.count) for r in rows] == [("halfhour", 20)]


def test_inside_retention_an_empty_recompute_still_tombstones() -> None:
    stored = _stored(10)
    # the horizon lies before the bucket (or the stream keeps raw forever): raw is the truth
    for horizon in (T0 - 1, None):
        rows, tombstones = _refresh([], stored, horizon_ms=horizon)
        assert rows == []
        # the coarser levels' tombstones come from the store (sinks.rollups.cascade_sql)
        assert [t.periodicity for t in tombstones] == ["halfhour"]
        assert all(replace(t, count=0) == t for t in tombstones)
