"""Rollups: worked examples, and processors/rollup.py against the naive reference."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.datum import Datum
from processors.rollup import (
    CASCADE_SOURCE,
    HOUR_MS,
    MINUTE_MS,
    PERIODICITIES,
    Periodicity,
    RawPoint,
    ResetMarker,
    RollupRow,
    Tolerances,
    bucket_bounds,
    bucket_start,
    buckets_between,
    combine,
    points_from_datum,
    recompute,
    rollup_all,
    stale_buckets,
)
from tests.unit import rollup_reference as ref

NY = "America/New_York"


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def by_start(rows: Iterable[RollupRow], prop: str | None = None) -> dict[int, RollupRow]:
    return {r.ts_start_ms: r for r in rows if prop is None or r.property == prop}


def a(t: str, value: float, prop: str = "wh") -> RawPoint:
    return RawPoint(ms(t), prop, "a", value)


# ---------------------------------------------------------------------------------------------
# Periods and zones


def test_dst_start_new_york_day_is_23_hours_and_hours_skip_2am() -> None:
    start, end = bucket_bounds(ms("2024-03-10T12:00:00+00:00"), "day", NY)
    assert start == ms("2024-03-10T00:00:00-05:00")
    assert end - start == 23 * HOUR_MS
    hours = list(buckets_between(ms("2024-03-10T05:00:00Z"), ms("2024-03-10T09:00:00Z"), "hour", NY))
    assert [s for s, _ in hours] == [
        ms("2024-03-10T00:00:00-05:00"),
        ms("2024-03-10T01:00:00-05:00"),
        ms("2024-03-10T03:00:00-04:00"),  # 02:00 local never happens
        ms("2024-03-10T04:00:00-04:00"),
    ]
    assert all(e - s == HOUR_MS for s, e in hours)
    # A meter gaining 10 every half hour: the 23-hour day holds 46 half hours of it.
    t, pts = start, []
    while t <= end:
        pts.append(RawPoint(t, "wh", "a", 10.0 * (t - start) / (30 * MINUTE_MS)))
        pts.append(RawPoint(t, "w", "i", 1.0))
        t += 30 * MINUTE_MS
    day = by_start(recompute(pts, [], start, end, "day", NY))
    assert day[start].kind == "a" and day[start].diff == pytest.approx(460.0)
    assert by_start(recompute(pts, [], start, end, "day", NY), "w")[start].count == 46


def test_dst_end_new_york_day_is_25_hours_and_1am_happens_twice() -> None:
    start, end = bucket_bounds(ms("2024-11-03T12:00:00+00:00"), "day", NY)
    assert start == ms("2024-11-03T00:00:00-04:00")
    assert end - start == 25 * HOUR_MS
    hours = [s for s, _ in buckets_between(start, start + 4 * HOUR_MS, "hour", NY)]
    assert hours == [
        ms("2024-11-03T00:00:00-04:00"),
        ms("2024-11-03T01:00:00-04:00"),
        ms("2024-11-03T01:00:00-05:00"),  # the repeated hour is its own bucket
        ms("2024-11-03T02:00:00-05:00"),
    ]
    pts = [RawPoint(start + k * 30 * MINUTE_MS, "w", "i", float(k)) for k in range(50)]
    day = by_start(recompute(pts, [], start, end, "day", NY))[start]
    assert (day.count, day.min, day.max) == (50, 0.0, 49.0)
    hour_rows = by_start(recompute(pts, [], start, end, "hour", NY))
    assert hour_rows[ms("2024-11-03T01:00:00-05:00")].avg == pytest.approx(4.5)


def test_half_hour_and_45_minute_zones_follow_the_local_clock() -> None:
    t = ms("2024-01-15T10:10:00Z")
    assert bucket_start(t, "hour", "Asia/Kolkata") == ms("2024-01-15T09:30:00Z")
    assert bucket_start(t, "halfhour", "Asia/Kolkata") == ms("2024-01-15T10:00:00Z")
    assert bucket_start(t, "day", "Asia/Kolkata") == ms("2024-01-14T18:30:00Z")
    assert bucket_start(t, "hour", "Asia/Kathmandu") == ms("2024-01-15T09:15:00Z")
    assert bucket_start(t, "halfhour", "Asia/Kathmandu") == ms("2024-01-15T09:45:00Z")
    # Adelaide, +10:30 in January; its DST ends 2024-04-07 03:00 local, back to 02:00.
    assert bucket_start(t, "hour", "Australia/Adelaide") == ms("2024-01-15T09:30:00Z")
    s, e = bucket_bounds(ms("2024-04-07T06:00:00Z"), "day", "Australia/Adelaide")
    assert (s, e - s) == (ms("2024-04-07T00:00:00+10:30"), 25 * HOUR_MS)


def test_lord_howe_half_hour_shift_and_midnight_gap() -> None:
    # Lord Howe springs forward 30 minutes at 02:00: the 02:00 hour is 30 minutes long.
    hours = list(buckets_between(ms("2023-09-30T14:30:00Z"), ms("2023-09-30T17:00:00Z"), "hour", "Australia/Lord_Howe"))
    assert [(s, e - s) for s, e in hours][1] == (ms("2023-09-30T15:30:00Z"), 30 * MINUTE_MS)
    # Sao Paulo (2018) sprang forward at midnight: that day opens at 01:00 and lasts 23 hours.
    s, e = bucket_bounds(ms("2018-11-04T12:00:00Z"), "day", "America/Sao_Paulo")
    assert (s, e - s) == (ms("2018-11-04T01:00:00-02:00"), 23 * HOUR_MS)


ZONES = [
    "America/New_York",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Adelaide",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Europe/London",
    "America/Sao_Paulo",
    "UTC",
]


@settings(max_examples=300, deadline=None)
@given(
    t=st.integers(ms("2000-01-01T00:00:00Z"), ms("2037-12-31T00:00:00Z")),
    tz=st.sampled_from(ZONES),
    per=st.sampled_from(["halfhour", "hour", "day", "week", "month"]),
)
def test_buckets_tile_time_and_match_the_reference(t: int, tz: str, per: Periodicity) -> None:
    s, e = bucket_bounds(t, per, tz)
    assert s <= t < e
    assert bucket_start(s, per, tz) == s
    assert bucket_start(e - 1, per, tz) == s
    assert bucket_start(e, per, tz) == e
    assert ref.buckets_covering(t, t, per, ZoneInfo(tz)) == [(s, e)]


def test_year_buckets_match_the_reference() -> None:
    for tz in ZONES:
        t = ms("2024-07-01T00:00:00Z")
        assert ref.buckets_covering(t, t, "year", ZoneInfo(tz)) == [bucket_bounds(t, "year", tz)]


# ---------------------------------------------------------------------------------------------
# Worked examples


@pytest.mark.parametrize("tz", ["UTC", "Europe/Paris", "Asia/Kolkata"])
def test_clock_difference_shared_in_proportion_to_time(tz: str) -> None:
    off = datetime(2024, 5, 1, tzinfo=ZoneInfo(tz)).strftime("%z")
    off = off[:3] + ":" + off[3:]
    pts = [a(f"2024-05-01T09:59:00{off}", 200.0), a(f"2024-05-01T10:02:00{off}", 500.0)]
    rows = by_start(recompute(pts, [], ms(f"2024-05-01T09:00:00{off}"), ms(f"2024-05-01T11:00:00{off}"), "hour", tz))
    h9, h10 = rows[ms(f"2024-05-01T09:00:00{off}")], rows[ms(f"2024-05-01T10:00:00{off}")]
    assert (h9.diff, h10.diff) == (100.0, 200.0)  # exactly
    # reading figures: 09:00 starts at its first reading; 10:00 starts at 09:59, ends at 10:02
    assert (h9.read_start, h9.read_end, h9.read_diff) == (200.0, 200.0, 0.0)
    assert (h10.read_start, h10.read_end, h10.read_diff) == (200.0, 500.0, 300.0)


def test_meter_reset_inside_an_hour() -> None:
    reset = ResetMarker(ms("2024-05-01T12:20:00Z"), {"wh": 115.0}, {"wh": 5.0})
    pts = [a("2024-05-01T12:00:00Z", 100.0), a("2024-05-01T12:40:00Z", 10.0)]
    for with_reading_at_reset in (False, True):
        extra = [a("2024-05-01T12:20:00Z", 115.0)] if with_reading_at_reset else []
        hour = recompute(pts + extra, [reset], ms("2024-05-01T12:00:00Z"), ms("2024-05-01T13:00:00Z"), "hour", "UTC")
        assert len(hour) == 1
        row = hour[0]
        assert (row.diff, row.read_diff, row.read_start, row.read_end) == (20.0, 20.0, 100.0, 10.0)
        assert row.count == 2 + len(extra)
        halves = by_start(
            recompute(pts + extra, [reset], ms("2024-05-01T12:00:00Z"), ms("2024-05-01T13:00:00Z"), "halfhour", "UTC")
        )
        # 15 before the reset, then 5 -> 10 over 12:20-12:40 split evenly across 12:30
        assert halves[ms("2024-05-01T12:00:00Z")].diff == pytest.approx(17.5)
        assert halves[ms("2024-05-01T12:30:00Z")].diff == pytest.approx(2.5)


@pytest.mark.parametrize("with_reading_at_reset", [False, True])
def test_meter_reset_exactly_on_a_bucket_end_closes_it_with_its_final(with_reading_at_reset: bool) -> None:
    # 100@12:30, a reset at 13:00 (final 115, start 5), 10@13:30. The 12:00 hour ends at the
    # reset's final (it closes the old chain); the 13:00 hour opens at its start.
    reset = ResetMarker(ms("2024-05-01T13:00:00Z"), {"wh": 115.0}, {"wh": 5.0})
    pts = [a("2024-05-01T12:30:00Z", 100.0), a("2024-05-01T13:30:00Z", 10.0)]
    if with_reading_at_reset:
        pts.append(a("2024-05-01T13:00:00Z", 112.0))
    lo, hi = ms("2024-05-01T12:00:00Z"), ms("2024-05-01T14:00:00Z")
    hours = by_start(recompute(pts, [reset], lo, hi, "hour", "UTC"))
    h12, h13 = hours[ms("2024-05-01T12:00:00Z")], hours[ms("2024-05-01T13:00:00Z")]
    assert (h12.read_start, h12.read_diff, h12.read_end) == (100.0, 15.0, 115.0)
    assert (h13.read_start, h13.read_diff, h13.read_end) == (5.0, 5.0, 10.0)
    for row in (h12, h13):
        assert row.read_start is not None and row.read_diff is not None
        assert row.read_start + row.read_diff == row.read_end
    # the naive reference agrees, and so does the day (the reset is inside it: one jump of 110)
    want = ref.reference(pts, [reset], "UTC", Tolerances(), ("hour", "day"))
    assert want[("hour", "wh", "a", h12.ts_start_ms)].read_end == 115.0
    assert want[("hour", "wh", "a", h13.ts_start_ms)].read_start == 5.0
    day = rollup_all(pts, [reset], lo, hi, "UTC")["day"][0]
    assert (day.read_start, day.read_diff, day.read_end) == (100.0, 20.0, 10.0)


def test_negative_differences_are_kept_and_long_gaps_share_nothing() -> None:
    pts = [a("2024-05-01T09:00:00Z", 100.0), a("2024-05-01T09:30:00Z", 90.0), a("2024-05-01T12:00:00Z", 200.0)]
    rows = by_start(recompute(pts, [], ms("2024-05-01T09:00:00Z"), ms("2024-05-01T13:00:00Z"), "hour", "UTC"))
    assert rows[ms("2024-05-01T09:00:00Z")].diff == -10.0
    assert ms("2024-05-01T10:00:00Z") not in rows  # 2.5 hours apart: no clock share, no row
    noon = rows[ms("2024-05-01T12:00:00Z")]
    assert noon.diff == 0.0
    # The reading difference still chains them (within the one-year look-back), in the bucket
    # whose (start, end] holds the later reading: a reading exactly at 12:00 ends the 11:00 hour.
    h11 = rows[ms("2024-05-01T11:00:00Z")]
    assert (h11.diff, h11.read_diff, h11.read_start, h11.read_end) == (0.0, 110.0, 90.0, 200.0)
    assert (noon.read_diff, noon.read_start, noon.read_end) == (0.0, 200.0, 200.0)
    day = recompute(pts, [], ms("2024-05-01T00:00:00Z"), ms("2024-05-02T00:00:00Z"), "day", "UTC")
    assert (day[0].diff, day[0].read_diff, day[0].read_start, day[0].read_end) == (-10.0, 100.0, 100.0, 200.0)


def test_status_mode_ties_go_to_the_smallest_and_tags_unite() -> None:
    pts = [
        RawPoint(ms("2024-05-01T09:10:00Z"), "mode", "s", text="off", tags=frozenset({"x"})),
        RawPoint(ms("2024-05-01T09:20:00Z"), "mode", "s", text="auto", tags=frozenset({"y"})),
        RawPoint(ms("2024-05-01T10:20:00Z"), "mode", "s", text="off"),
    ]
    hours = by_start(recompute(pts, [], ms("2024-05-01T09:00:00Z"), ms("2024-05-01T11:00:00Z"), "hour", "UTC"))
    h9 = hours[ms("2024-05-01T09:00:00Z")]
    assert (h9.mode, h9.count, h9.tags) == ("auto", 2, ("x", "y"))
    day = combine(hours.values(), "day", "UTC")[0]
    assert (day.mode, day.status_counts) == ("off", (("auto", 1), ("off", 2)))


def test_pulses_are_summed() -> None:
    d = Datum(1, "m", ms("2024-05-01T09:10:00Z"), i={"pulses": 3.0, "w": 5.0})
    pts = points_from_datum(d, pulse={"pulses"}) + [RawPoint(ms("2024-05-01T09:40:00Z"), "pulses", "p", 4.0)]
    rows = recompute(pts, [], ms("2024-05-01T09:00:00Z"), ms("2024-05-01T10:00:00Z"), "hour", "UTC")
    pulses = next(r for r in rows if r.property == "pulses")
    assert (pulses.kind, pulses.count, pulses.diff) == ("p", 2, 7.0)


def test_duplicates_and_rewrites_are_order_independent() -> None:
    t = ms("2024-05-01T09:10:00Z")
    pts = [
        RawPoint(t, "w", "i", 1.0),
        RawPoint(t, "w", "i", 1.0),  # identical duplicate
        RawPoint(t + 1, "w", "i", 5.0, seq=1),
        RawPoint(t + 1, "w", "i", 7.0, seq=2),  # the rewrite wins
        RawPoint(t + 2, "w", "i", 3.0, seq=4),
        RawPoint(t + 2, "w", "i", 2.0, seq=4),  # same seq: the larger payload wins, whatever order
    ]
    expect = None
    rng = random.Random(1)
    for _ in range(10):
        rng.shuffle(pts)
        rows = recompute(pts, [], t, t + 1, "hour", "UTC")
        assert (rows[0].count, rows[0].max, rows[0].avg) == (3, 7.0, 11.0 / 3)
        expect = expect or rows
        assert rows == expect


def test_no_readings_and_single_reading() -> None:
    assert recompute([], [], 0, DAY, "day", "UTC") == []
    one = recompute([a("1970-01-01T05:00:00Z", 42.0)], [], 0, DAY, "hour", "UTC")
    assert len(one) == 1
    assert (one[0].count, one[0].diff, one[0].read_diff, one[0].read_start, one[0].read_end) == (
        1,
        0.0,
        0.0,
        42.0,
        42.0,
    )


DAY = 24 * HOUR_MS


# ---------------------------------------------------------------------------------------------
# Randomized: the module against the reference, every level, both paths


TOLERANCES = [
    Tolerances(),
    Tolerances(clock_ms=30 * MINUTE_MS, lookback_ms=3 * HOUR_MS),
    Tolerances(clock_ms=90 * MINUTE_MS, lookback_ms=DAY),
    Tolerances(clock_ms=HOUR_MS, lookback_ms=HOUR_MS),
]
ANCHORS = [
    ("America/New_York", "2024-03-10T04:00:00Z"),
    ("America/New_York", "2024-11-03T03:00:00Z"),
    ("Europe/London", "2023-12-31T20:00:00Z"),
    ("Australia/Adelaide", "2024-04-06T14:00:00Z"),
    ("Asia/Kolkata", "2024-02-28T12:00:00Z"),
    ("Asia/Kathmandu", "2024-06-30T15:00:00Z"),
    ("Australia/Lord_Howe", "2023-09-30T12:00:00Z"),
    ("America/Sao_Paulo", "2018-11-03T20:00:00Z"),
    ("UTC", "2024-01-01T00:00:00Z"),
]


def random_stream(rng: random.Random) -> tuple[str, list[RawPoint], list[ResetMarker], Tolerances]:
    tz, anchor = rng.choice(ANCHORS)
    t = ms(anchor) - rng.randint(0, 6 * HOUR_MS)
    meter = rng.uniform(0, 1e6)
    points: list[RawPoint] = []
    resets: list[ResetMarker] = []
    for _ in range(rng.randint(0, 90)):
        roll = rng.random()
        if roll < 0.6:
            t += rng.randint(1_000, 10 * MINUTE_MS)
        elif roll < 0.8:
            t += rng.randint(20 * MINUTE_MS, 100 * MINUTE_MS)
        elif roll < 0.85:
            t += rng.randint(2 * HOUR_MS, 30 * HOUR_MS)
        elif roll < 0.9:  # a long gap ending exactly at a local midnight or hour
            level = rng.choice(["day", "hour"])
            t = ref.buckets_covering(t + 2 * HOUR_MS, t + 2 * HOUR_MS, level, ZoneInfo(tz))[0][1]
        else:  # land exactly on a boundary, where half-open rules bite
            t = (t // (30 * MINUTE_MS) + rng.randint(1, 4)) * 30 * MINUTE_MS
        tags = frozenset(rng.sample(["x", "y", "z"], rng.randint(0, 2)))
        if rng.random() < 0.9:
            points.append(RawPoint(t, "w", "i", round(rng.uniform(-50, 5000), 3), tags=tags))
        if rng.random() < 0.9:
            meter += rng.uniform(-5, 50)
            points.append(RawPoint(t, "wh", "a", meter, tags=tags))
        if rng.random() < 0.5:
            meter2 = rng.uniform(0, 100)
            points.append(RawPoint(t, "vah", "a", meter2))
        if rng.random() < 0.6:
            points.append(RawPoint(t, "mode", "s", text=rng.choice(["auto", "off", "fault"])))
        if rng.random() < 0.3:
            points.append(RawPoint(t, "pulses", "p", float(rng.randint(0, 5))))
        if rng.random() < 0.07:
            at = t + rng.choice([0, 0, rng.randint(1, HOUR_MS)])
            final, meter = meter + rng.uniform(0, 3), rng.uniform(0, 10)
            resets.append(ResetMarker(at, {"wh": final, "vah": 1.0}, {"wh": meter}))
    extra: list[RawPoint] = []
    for p in points:
        if rng.random() < 0.1:
            extra.append(p)  # delivered twice
        if rng.random() < 0.05 and p.value is not None:
            extra.append(RawPoint(p.created_ms, p.property, p.kind, p.value + 1, seq=1, tags=p.tags))
    resets += [r for r in resets if rng.random() < 0.2]
    points += extra
    rng.shuffle(points)
    rng.shuffle(resets)
    return tz, points, resets, rng.choice(TOLERANCES)


def span(points: Sequence[RawPoint], resets: Sequence[ResetMarker]) -> tuple[int, int]:
    times = [p.created_ms for p in points] + [r.created_ms for r in resets]
    return min(times), max(times) + 1


def assert_matches(
    rows: Iterable[RollupRow], expected: dict[tuple[str, str, str, int], ref.RefRow], scale: float, where: str
) -> None:
    got = {(r.periodicity, r.property, r.kind, r.ts_start_ms): r for r in rows}
    missing = sorted(set(expected) - set(got))
    surplus = sorted(set(got) - set(expected))
    assert not missing and not surplus, (
        f"{where}: missing {[(k[0], k[1], ref.iso(k[3])) for k in missing[:5]]} "
        f"surplus {[(k[0], k[1], ref.iso(k[3])) for k in surplus[:5]]}"
    )

    def close(x: float | None, y: object) -> bool:
        if x is None or y is None:
            return x is None and y is None
        exact = float(y)  # type: ignore[arg-type]
        return math.isclose(x, exact, rel_tol=1e-9, abs_tol=1e-9 * scale)

    for key, row in got.items():
        want = expected[key]
        label = f"{where} {key[0]} {key[1]} {ref.iso(key[3])}: {row} vs {want}"
        assert row.count == want.count, label
        assert (row.min, row.max, row.mode, row.tags) == (want.min, want.max, want.mode, want.tags), label
        assert row.status_counts == want.status_counts, label
        assert (row.read_start, row.read_end) == (want.read_start, want.read_end), label
        assert close(row.avg, want.avg), label
        assert close(row.diff, want.diff), label
        assert close(row.read_diff, want.read_diff), label


def scale_of(points: Sequence[RawPoint], resets: Sequence[ResetMarker]) -> float:
    values = [abs(p.value) for p in points if p.value is not None]
    values += [abs(v) for r in resets for v in (*r.final.values(), *r.start.values())]
    return max(values, default=1.0)


@pytest.mark.parametrize("seed", range(40))
def test_random_streams_match_the_reference_at_every_level(seed: int) -> None:
    rng = random.Random(seed)
    tz, points, resets, tol = random_stream(rng)
    if not points and not resets:
        assert rollup_all(points, resets, 0, 1, tz, tol)["year"] == []
        return
    expected = ref.reference(points, resets, tz, tol)
    scale = scale_of(points, resets)
    lo, hi = span(points, resets)
    # each level straight from raw
    for per in PERIODICITIES:
        rows = recompute(points, resets, lo, hi, per, tz, tol)
        want = {k: v for k, v in expected.items() if k[0] == per}
        assert_matches(rows, want, scale, f"seed {seed} raw")
    # the cascade halfhour -> hour -> day -> week/month -> year
    levels = rollup_all(points, resets, lo, hi, tz, tol)
    assert_matches([r for rows in levels.values() for r in rows], expected, scale, f"seed {seed} cascade")
    # hour straight from halfhour too, and order does not matter at all
    assert combine(levels["halfhour"], "hour", tz) == levels["hour"]
    rng.shuffle(points)
    assert rollup_all(list(reversed(points)), resets[::-1], lo, hi, tz, tol) == levels


def test_week_does_not_combine_into_month() -> None:
    row = RollupRow("week", 1, "m", "w", "i", 0, 7 * DAY, count=1, avg=1.0, min=1.0, max=1.0)
    with pytest.raises(ValueError):
        combine([row], "month", "UTC")


# ---------------------------------------------------------------------------------------------
# The stale rule: recomputing only the stale buckets gives the full recompute


def apply_stale(
    before: dict[Periodicity, list[RollupRow]],
    stale: set[tuple[Periodicity, int]],
    points: Sequence[RawPoint],
    resets: Sequence[ResetMarker],
    tz: str,
    tol: Tolerances,
) -> dict[Periodicity, list[RollupRow]]:
    after: dict[Periodicity, list[RollupRow]] = {}
    for per in PERIODICITIES:  # cascade order
        starts = {s for p, s in stale if p == per}
        kept = [r for r in before[per] if r.ts_start_ms not in starts]
        fresh: list[RollupRow] = []
        source = CASCADE_SOURCE[per]
        if source is None:
            for s in sorted(starts):
                fresh += recompute(points, resets, s, s + 1, per, tz, tol)
        else:
            children = [r for r in after[source] if bucket_start(r.ts_start_ms, per, tz) in starts]
            fresh = combine(children, per, tz)
        after[per] = sorted(kept + fresh, key=lambda r: (r.property, r.kind, r.ts_start_ms))
    return after


def stale_buckets_for_change(
    points: Iterable[RawPoint], resets: Iterable[ResetMarker], changed_ms: int, tz: str, tolerances: Tolerances
) -> set[tuple[Periodicity, int]]:
    """stale_buckets for every property of a stream, its neighbours found in the stream's raw rows
    (rows at changed_ms itself are ignored): what the worker does with the store's neighbour
    lookup (sinks.rollups.read_neighbours), by brute force."""
    times: dict[str, list[int]] = {}
    for p in points:
        if p.kind == "a" and p.value is not None:
            times.setdefault(p.property, []).append(p.created_ms)
    for r in resets:
        for prop in r.final:
            if r.applies_to(prop):
                times.setdefault(prop, []).append(r.created_ms)
    out = stale_buckets(changed_ms, None, None, tz, tolerances)
    for ts in times.values():
        before = [t for t in ts if t < changed_ms]
        after = [t for t in ts if t > changed_ms]
        out |= stale_buckets(changed_ms, max(before) if before else None, min(after) if after else None, tz, tolerances)
    return out


@pytest.mark.parametrize("seed", range(40))
def test_recomputing_only_stale_buckets_equals_recomputing_everything(seed: int) -> None:
    rng = random.Random(1000 + seed)
    tz, points, resets, tol = random_stream(rng)
    if len(points) < 3:
        return
    lo, hi = span(points, resets)
    hi += 3 * DAY  # room for a late reading after the last one, same window before and after
    before = rollup_all(points, resets, lo, hi, tz, tol)
    action = rng.choice(["insert", "insert", "delete", "reset", "rewrite"])
    new_points, new_resets = list(points), list(resets)
    if action == "delete":
        t = rng.choice(points).created_ms
        new_points = [p for p in points if p.created_ms != t]
    else:
        t = rng.randint(lo, hi - 2 * DAY)
        if action == "rewrite":
            t = rng.choice(points).created_ms
        if action == "reset":
            new_resets.append(ResetMarker(t, {"wh": rng.uniform(0, 1e6)}, {"wh": 0.0}, seq=9))
        else:
            new_points += [
                RawPoint(t, "wh", "a", rng.uniform(0, 1e6), seq=9),
                RawPoint(t, "w", "i", 1.5, seq=9),
                RawPoint(t, "mode", "s", text="late", seq=9),
            ]
    # the stale set from the rows before and after the change: each side's neighbours
    stale = stale_buckets_for_change(points, resets, t, tz, tol) | stale_buckets_for_change(
        new_points, new_resets, t, tz, tol
    )
    patched = apply_stale(before, stale, new_points, new_resets, tz, tol)
    full = rollup_all(new_points, new_resets, lo, hi, tz, tol)
    for per in PERIODICITIES:
        assert patched[per] == full[per], f"{action} at {ref.iso(t)}: {per} differs"


def test_stale_rule_is_bounded_by_the_clock_tolerance() -> None:
    t = ms("2024-05-01T12:10:00Z")
    near = stale_buckets(t, t - 20 * MINUTE_MS, t + 70 * MINUTE_MS, "UTC", periodicities=["hour"])
    assert near == {
        ("hour", ms("2024-05-01T11:00:00Z")),
        ("hour", ms("2024-05-01T12:00:00Z")),
        ("hour", ms("2024-05-01T13:00:00Z")),
    }
    # neighbours months away: only the change's bucket and the next reading's bucket
    far = stale_buckets(t, t - 90 * DAY, t + 30 * DAY, "UTC", periodicities=["hour"])
    assert far == {("hour", ms("2024-05-01T12:00:00Z")), ("hour", ms("2024-05-31T12:00:00Z"))}
