"""Rollups of one datum stream by periodicity, with SolarNetwork's semantics, in the node's zone.

A bucket is a pure function of the stream's raw rows (design (b)): a new, changed or deleted
reading marks buckets stale (`stale_buckets`), and stale buckets are recomputed from raw
(`recompute`) or from the finer level (`combine`), cascading halfhour -> hour -> day ->
(week, month) -> year. Pure: no I/O. Semantics, edge cases and the stale rule: docs/rollups.md.

Every figure is additive over a partition of time, so a day computed from raw equals the day
combined from its hours; the reference in tests/unit/rollup_reference.py checks this.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from functools import lru_cache, partial
from typing import Any, Literal
from zoneinfo import ZoneInfo

from processors.datum import Datum

Periodicity = Literal["halfhour", "hour", "day", "week", "month", "year"]
PERIODICITIES: tuple[Periodicity, ...] = ("halfhour", "hour", "day", "week", "month", "year")
# i instantaneous, a accumulating, s status, p pulse (OpenGate PULSE datastreams: summed)
RollupKind = Literal["i", "a", "s", "p"]

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
_SUBDAY_MS: Mapping[str, int] = {"halfhour": 30 * MINUTE_MS, "hour": HOUR_MS}
_EPOCH_DATE = date(1970, 1, 1)

# The level each level is normally built from in the cascade; halfhour comes from raw.
CASCADE_SOURCE: Mapping[Periodicity, Periodicity | None] = {
    "halfhour": None,
    "hour": "halfhour",
    "day": "hour",
    "week": "day",
    "month": "day",
    "year": "month",
}
# Finer levels whose buckets nest exactly inside the coarser one (a week straddles months).
_NESTS_IN: Mapping[Periodicity, frozenset[Periodicity]] = {
    "halfhour": frozenset(),
    "hour": frozenset({"halfhour"}),
    "day": frozenset({"halfhour", "hour"}),
    "week": frozenset({"halfhour", "hour", "day"}),
    "month": frozenset({"halfhour", "hour", "day"}),
    "year": frozenset({"halfhour", "hour", "day", "month"}),
}

Zone = ZoneInfo | str


@dataclass(frozen=True, slots=True)
class Tolerances:
    """How far apart readings may be and still be paired.

    clock_ms: consecutive readings further apart than this share nothing in the clock difference.
    lookback_ms: readings further apart than this are not chained for the reading difference,
    and a reading this far behind its successor is not a bucket's start.
    """

    clock_ms: int = HOUR_MS
    lookback_ms: int = 366 * DAY_MS  # one year, leap day included

    def __post_init__(self) -> None:
        if self.clock_ms < 0:
            raise ValueError("clock tolerance is negative")
        # The proofs that combining equals recomputing rely on clock pairs being reading pairs.
        if self.lookback_ms < self.clock_ms:
            raise ValueError("look-back tolerance is shorter than the clock tolerance")


DEFAULT_TOLERANCES = Tolerances()


@dataclass(frozen=True, slots=True)
class RawPoint:
    """One property of one raw datum. `seq` orders rewrites of the same (created, property)."""

    created_ms: int
    property: str
    kind: RollupKind
    value: float | None = None
    text: str | None = None
    seq: int = 0
    tags: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ResetMarker:
    """A SolarNetwork Reset auxiliary: the meter read `final` then restarted at `start`."""

    created_ms: int
    final: Mapping[str, float]
    start: Mapping[str, float]
    seq: int = 0

    def applies_to(self, prop: str) -> bool:
        return prop in self.final and prop in self.start


@dataclass(frozen=True, slots=True)
class RollupRow:
    """One (stream, property, bucket) figure set. Fields not meaningful for `kind` are None.

    i: avg, count, min, max.  a: count (readings), diff (clock), read_diff, read_start, read_end.
    s: count, mode, status_counts (kept so coarser modes are exact).  p: count, diff (the sum).
    """

    periodicity: Periodicity
    node_id: int
    source_id: str
    property: str
    kind: RollupKind
    ts_start_ms: int
    ts_end_ms: int
    count: int = 0
    avg: float | None = None
    min: float | None = None
    max: float | None = None
    diff: float | None = None
    read_diff: float | None = None
    read_start: float | None = None
    read_end: float | None = None
    mode: str | None = None
    status_counts: tuple[tuple[str, int], ...] = ()
    tags: tuple[str, ...] = ()

    def key(self) -> tuple[Periodicity, int, str, str, RollupKind, int]:
        """The row's identity: the SQL view's primary key."""
        return (
            self.periodicity,
            self.node_id,
            self.source_id,
            self.property,
            self.kind,
            self.ts_start_ms,
        )


# ---------------------------------------------------------------------------------------------
# Periods in the node's time zone


def zone(tz: Zone) -> ZoneInfo:
    return tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)


def _exact_offset_ms(ts_ms: int, tz: ZoneInfo) -> int:
    # tzdata offsets and transitions fall on whole seconds, so the second is enough.
    off = datetime.fromtimestamp(ts_ms // 1000, tz).utcoffset()
    assert off is not None
    return off // timedelta(milliseconds=1)


@lru_cache(maxsize=1 << 14)
def _hour_offsets(hour_ms: int, tz: ZoneInfo) -> tuple[int, int]:
    """The offsets at the first and the last whole second of one UTC hour."""
    return _exact_offset_ms(hour_ms, tz), _exact_offset_ms(hour_ms + HOUR_MS - 1000, tz)


def _offset_ms(ts_ms: int, tz: ZoneInfo) -> int:
    """The zone's UTC offset at ts_ms. A zone changes its offset at most once in an hour (tzdata's
    transitions are weeks apart at the least: tests/unit/test_rollup_offsets.py reads them all),
    so where an hour's first and last second share an offset, every instant of it has that
    offset: asked once per hour and zone, not per instant (the stale half hours of a fleet ask
    for thousands of instants a batch, issue 13)."""
    first, last = _hour_offsets(ts_ms // HOUR_MS * HOUR_MS, tz)
    return first if first == last else _exact_offset_ms(ts_ms, tz)


def _first_with_offset(lo: int, hi: int, off: int, tz: ZoneInfo) -> int:
    """Smallest u in (lo, hi] whose offset is `off`, given offset(lo) != off == offset(hi)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset_ms(mid, tz) == off:
            hi = mid
        else:
            lo = mid
    return hi


def _naive_ms(d: date) -> int:
    return (d - _EPOCH_DATE).days * DAY_MS


def _label_start(wall_ms: int, periodicity: Periodicity) -> int:
    """The naive wall-clock instant opening the day-or-longer period containing wall_ms."""
    days = wall_ms // DAY_MS
    if periodicity == "day":
        return days * DAY_MS
    if periodicity == "week":
        return (days - (days + 3) % 7) * DAY_MS  # 1970-01-01 was a Thursday; ISO weeks open Monday
    d = _EPOCH_DATE + timedelta(days=days)
    if periodicity == "month":
        return _naive_ms(d.replace(day=1))
    return _naive_ms(d.replace(month=1, day=1))


def _next_label(label_ms: int, periodicity: Periodicity) -> int:
    if periodicity == "day":
        return label_ms + DAY_MS
    if periodicity == "week":
        return label_ms + 7 * DAY_MS
    d = _EPOCH_DATE + timedelta(days=label_ms // DAY_MS)
    if periodicity == "month":
        nxt = date(d.year + 1, 1, 1) if d.month == 12 else date(d.year, d.month + 1, 1)
        return _naive_ms(nxt)
    return _naive_ms(date(d.year + 1, 1, 1))


def _first_instant(wall_ms: int, tz: ZoneInfo) -> int:
    """The earliest UTC instant whose wall clock reads wall_ms, or the end of the gap holding it."""
    naive = datetime(1970, 1, 1) + timedelta(milliseconds=wall_ms)
    off0 = naive.replace(tzinfo=tz).utcoffset()
    assert off0 is not None
    c0 = wall_ms - off0 // timedelta(milliseconds=1)
    if c0 + _offset_ms(c0, tz) == wall_ms:
        return c0  # fold=0 is the earlier of two readings of an ambiguous wall time
    off1 = naive.replace(tzinfo=tz, fold=1).utcoffset()
    assert off1 is not None
    c1 = wall_ms - off1 // timedelta(milliseconds=1)
    # wall_ms is skipped (e.g. midnight in a zone that springs forward at 00:00): the period
    # opens at the transition.
    return _first_with_offset(c1, c0, _offset_ms(c0, tz), tz)


def bucket_start(ts_ms: int, periodicity: Periodicity, tz: Zone) -> int:
    """UTC epoch ms opening the bucket holding ts_ms.

    halfhour/hour: the latest instant <= ts_ms whose local wall clock reads :00 (or :30), or
    the latest offset change if later, so the repeated hour of a fall-back is two buckets.
    Longer periods: the first instant of the local calendar day/ISO week/month/year.
    """
    z = zone(tz)
    off = _offset_ms(ts_ms, z)
    step = _SUBDAY_MS.get(periodicity)
    if step is not None:
        grid = (ts_ms + off) // step * step - off
        if _offset_ms(grid, z) == off:
            return grid
        return _first_with_offset(grid, ts_ms, off, z)
    return _first_instant(_label_start(ts_ms + off, periodicity), z)


def _bucket_end(start_ms: int, periodicity: Periodicity, z: ZoneInfo) -> int:
    off = _offset_ms(start_ms, z)
    step = _SUBDAY_MS.get(periodicity)
    if step is not None:
        end = (start_ms + off) // step * step + step - off
        last_off = _offset_ms(end - 1, z)
        if last_off == off:
            return end
        return _first_with_offset(start_ms, end - 1, last_off, z)
    return _first_instant(_next_label(_label_start(start_ms + off, periodicity), periodicity), z)


def bucket_bounds(ts_ms: int, periodicity: Periodicity, tz: Zone) -> tuple[int, int]:
    """[start_ms, end_ms) of the bucket holding ts_ms."""
    return _bounds(ts_ms, periodicity, zone(tz))


# A fleet's streams share their buckets: the same (instant, level, zone) is asked for thousands
# of times a batch (mostly bucket starts, by the cascade), each a few zone conversions.
@lru_cache(maxsize=1 << 16)
def _bounds(ts_ms: int, periodicity: Periodicity, z: ZoneInfo) -> tuple[int, int]:
    start = bucket_start(ts_ms, periodicity, z)
    return start, _bucket_end(start, periodicity, z)


def buckets_between(start_ms: int, end_ms: int, periodicity: Periodicity, tz: Zone) -> Iterator[tuple[int, int]]:
    """Every bucket [s, e) overlapping [start_ms, end_ms), in order."""
    z = zone(tz)
    s = bucket_start(start_ms, periodicity, z)
    while s < end_ms:
        e = _bounds(s, periodicity, z)[1]  # s opens its bucket: cached
        yield s, e
        s = e


# ---------------------------------------------------------------------------------------------
# Raw input


def points_from_datum(datum: Datum, seq: int = 0, pulse: Collection[str] = ()) -> list[RawPoint]:
    """Split a datum into RawPoints; properties named in `pulse` become kind 'p'."""
    tags = frozenset(datum.tags)
    out: list[RawPoint] = []
    for kind, name, value in datum.samples():
        if kind == "s":
            out.append(RawPoint(datum.created_ms, name, "s", None, str(value), seq, tags))
        else:
            k: RollupKind = "p" if name in pulse else kind
            out.append(RawPoint(datum.created_ms, name, k, float(value), None, seq, tags))
    return out


def _point_rank(p: RawPoint) -> tuple[int, bool, float, str, tuple[str, ...]]:
    # Highest seq wins; equal seq falls back to the payload so the winner is order-independent.
    return (p.seq, p.value is not None, p.value or 0.0, p.text or "", tuple(sorted(p.tags)))


def dedupe_points(points: Iterable[RawPoint]) -> list[RawPoint]:
    """One point per (created, property, kind), chosen independently of input order."""
    best: dict[tuple[int, str, str], RawPoint] = {}
    for p in points:
        key = (p.created_ms, p.property, p.kind)
        held = best.get(key)
        if held is None or _point_rank(p) > _point_rank(held):
            best[key] = p
    return sorted(best.values(), key=lambda p: (p.property, p.kind, p.created_ms))


def _reset_rank(r: ResetMarker) -> tuple[int, tuple[tuple[str, float], ...], tuple[tuple[str, float], ...]]:
    return (r.seq, tuple(sorted(r.final.items())), tuple(sorted(r.start.items())))


def dedupe_resets(resets: Iterable[ResetMarker]) -> list[ResetMarker]:
    """One reset per created instant, chosen independently of input order."""
    best: dict[int, ResetMarker] = {}
    for r in resets:
        held = best.get(r.created_ms)
        if held is None or _reset_rank(r) > _reset_rank(held):
            best[r.created_ms] = r
    return [best[t] for t in sorted(best)]


# A chain node of an accumulating property: a reading (in == out) or a reset (in = final,
# out = start). At equal times a reading precedes the reset ("readings up to the reset").
@dataclass(frozen=True, slots=True)
class _Node:
    t: int
    order: int  # 0 reading, 1 reset
    in_v: float
    out_v: float
    tags: frozenset[str]


def _chain(readings: Sequence[RawPoint], resets: Sequence[ResetMarker], prop: str) -> list[_Node]:
    nodes = [_Node(p.created_ms, 0, p.value, p.value, p.tags) for p in readings if p.value is not None]
    nodes += [_Node(r.created_ms, 1, r.final[prop], r.start[prop], frozenset()) for r in resets if r.applies_to(prop)]
    nodes.sort(key=lambda n: (n.t, n.order))
    return nodes


# ---------------------------------------------------------------------------------------------
# Recompute from raw


def recompute(
    points: Iterable[RawPoint],
    resets: Iterable[ResetMarker],
    window_start_ms: int,
    window_end_ms: int,
    periodicity: Periodicity,
    tz: Zone,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
    node_id: int = 0,
    source_id: str = "",
) -> list[RollupRow]:
    """Every row of one stream for the buckets overlapping [window_start_ms, window_end_ms).

    Pass the stream's raw rows from [window_start - lookback, window_end + lookback] (only the
    neighbours matter beyond the window). Order and exact duplicates do not matter.
    Rows come sorted by (property, kind, ts_start_ms); buckets with nothing in them have no row.
    """
    edges = window_edges(window_start_ms, window_end_ms, periodicity, tz)
    if not edges:
        return []
    row = blank_rows(periodicity, node_id, source_id, edges)
    pts = dedupe_points(points)
    rst = dedupe_resets(resets)
    series: dict[tuple[str, RollupKind], list[RawPoint]] = {}
    for p in pts:
        series.setdefault((p.property, p.kind), []).append(p)
    for r in rst:
        for prop in r.final:
            if r.applies_to(prop):
                series.setdefault((prop, "a"), [])

    out: list[RollupRow] = []
    for (prop, kind), items in sorted(series.items()):
        if kind == "a":
            out += _accumulating(items, rst, prop, edges, tolerances, partial(row, prop, kind))
        else:
            out += _simple(items, kind, edges, partial(row, prop, kind))
    return out


def window_edges(window_start_ms: int, window_end_ms: int, periodicity: Periodicity, tz: Zone) -> list[int]:
    """Bucket k of the window is [edges[k], edges[k + 1]); no edges when no bucket overlaps it."""
    bounds = list(buckets_between(window_start_ms, window_end_ms, periodicity, tz))
    return [s for s, _ in bounds] + [bounds[-1][1]] if bounds else []


def blank_rows(
    periodicity: Periodicity, node_id: int, source_id: str, edges: Sequence[int]
) -> Callable[..., RollupRow]:
    """(property, kind, k, **figures) -> the row of bucket k with those figures (none: empty)."""

    def row(prop: str, kind: RollupKind, k: int, **figures: Any) -> RollupRow:
        # one constructor call: a blank row and dataclasses.replace cost twice (issue 13)
        return RollupRow(periodicity, node_id, source_id, prop, kind, edges[k], edges[k + 1], **figures)

    return row


def _bucket_of(edges: Sequence[int], t: int) -> int:
    """Index k with edges[k] <= t < edges[k+1], or -1 outside the window."""
    if t < edges[0] or t >= edges[-1]:
        return -1
    return bisect.bisect_right(edges, t) - 1


def _simple(
    items: Sequence[RawPoint],
    kind: RollupKind,
    edges: Sequence[int],
    blank: Callable[[int], RollupRow],
) -> list[RollupRow]:
    counts: dict[int, int] = {}
    total: dict[int, float] = {}
    lo: dict[int, float] = {}
    hi: dict[int, float] = {}
    texts: dict[int, Counter[str]] = {}
    tags: dict[int, set[str]] = {}
    for p in items:  # sorted by time, so float sums are order-independent
        k = _bucket_of(edges, p.created_ms)
        if k < 0:
            continue
        if kind == "s":
            if p.text is None:
                continue
            texts.setdefault(k, Counter())[p.text] += 1
        else:
            if p.value is None:
                continue
            v = p.value
            total[k] = total.get(k, 0.0) + v
            lo[k] = min(lo.get(k, v), v)
            hi[k] = max(hi.get(k, v), v)
        counts[k] = counts.get(k, 0) + 1
        tags.setdefault(k, set()).update(p.tags)
    out: list[RollupRow] = []
    for k in sorted(counts):
        base = blank(k)
        n = counts[k]
        tg = tuple(sorted(tags[k]))
        if kind == "s":
            sc = tuple(sorted(texts[k].items()))
            out.append(replace(base, count=n, mode=_mode(sc), status_counts=sc, tags=tg))
        elif kind == "p":
            out.append(replace(base, count=n, diff=total[k], tags=tg))
        else:
            out.append(replace(base, count=n, avg=total[k] / n, min=lo[k], max=hi[k], tags=tg))
    return out


def _mode(status_counts: Sequence[tuple[str, int]]) -> str | None:
    """Most frequent value; ties go to the lexicographically smallest (deterministic)."""
    if not status_counts:
        return None
    top = max(c for _, c in status_counts)
    return min(v for v, c in status_counts if c == top)


def _accumulating(
    readings: Sequence[RawPoint],
    resets: Sequence[ResetMarker],
    prop: str,
    edges: Sequence[int],
    tol: Tolerances,
    blank: Callable[[int], RollupRow],
) -> list[RollupRow]:
    nodes = _chain(readings, resets, prop)
    times = [n.t for n in nodes]
    nb = len(edges) - 1
    live: set[int] = set()
    diff: dict[int, float] = {}
    read: dict[int, float] = {}
    count: dict[int, int] = {}
    tags: dict[int, set[str]] = {}
    for n in nodes:
        k = _bucket_of(edges, n.t)
        if k >= 0:
            live.add(k)
            if n.order == 0:
                count[k] = count.get(k, 0) + 1
                tags.setdefault(k, set()).update(n.tags)
    for a, b in zip(nodes, nodes[1:], strict=False):
        length = b.t - a.t
        inc = b.in_v - a.out_v
        if length <= tol.clock_ms:
            if length == 0:
                # A reading and a reset at the same instant: nothing to share by time.
                k = _bucket_of(edges, a.t)
                if k >= 0:
                    diff[k] = diff.get(k, 0.0) + inc
                    live.add(k)
            else:
                k = max(bisect.bisect_right(edges, a.t) - 1, 0)
                while k < nb and edges[k] < b.t:
                    overlap = min(b.t, edges[k + 1]) - max(a.t, edges[k])
                    if overlap > 0:
                        diff[k] = diff.get(k, 0.0) + inc * overlap / length
                        live.add(k)
                    k += 1
        if length <= tol.lookback_ms:
            # The reading difference goes to the bucket whose (start, end] holds the later node;
            # a reading-to-reset step at one instant not chained to the past goes to [start, end).
            if length == 0 and not _chained(times, bisect.bisect_left(times, b.t), tol.lookback_ms):
                k = _bucket_of(edges, b.t)
            else:
                k = bisect.bisect_left(edges, b.t) - 1
            if 0 <= k < nb:
                read[k] = read.get(k, 0.0) + inc
                live.add(k)
    out: list[RollupRow] = []
    for k in sorted(live):
        s, e = edges[k], edges[k + 1]
        first = _start_node(times, nodes, s, e, tol.lookback_ms)
        last = _end_node(times, e, tol.lookback_ms)
        base = blank(k)
        out.append(
            replace(
                base,
                count=count.get(k, 0),
                diff=diff.get(k, 0.0),
                read_diff=read.get(k, 0.0),
                read_start=None if first is None else nodes[first].out_v,
                read_end=None if first is None or last is None else _end_value(nodes[last], e),
                tags=tuple(sorted(tags.get(k, ()))),
            )
        )
    return out


def _chained(times: Sequence[int], first: int, lookback: int) -> bool:
    """Whether the nodes at times[first] (the first of them) are chained to an earlier node."""
    return first > 0 and times[first] - times[first - 1] <= lookback


def _start_node(times: Sequence[int], nodes: Sequence[_Node], s: int, e: int, lookback: int) -> int | None:
    """The latest node at or before s, if its successor is within the look-back (so the rule
    does not depend on where the bucket starts); else the first node in [s, e). Nodes exactly
    at s: the last of them if chained to the past (the previous bucket ended there), else the
    first (this bucket opens there)."""
    i = bisect.bisect_right(times, s) - 1
    if i >= 0 and times[i] == s:
        first = bisect.bisect_left(times, s)
        return i if _chained(times, first, lookback) else first
    if i >= 0 and i + 1 < len(times) and times[i + 1] - times[i] <= lookback:
        return i
    j = i + 1
    if j < len(times) and times[j] < e:
        return j
    return None


def _end_value(node: _Node, e: int) -> float:
    """A bucket's closing reading: a reset exactly at its end closes it with its `final` (the
    pair into the reset counts here), and opens the next bucket with its `start`."""
    return node.in_v if node.t == e else node.out_v


def _end_node(times: Sequence[int], e: int, lookback: int) -> int | None:
    """The latest node at or before e; nodes exactly at e count only if chained to the past,
    mirroring the start rule."""
    i = bisect.bisect_right(times, e) - 1
    if i >= 0 and times[i] == e:
        first = bisect.bisect_left(times, e)
        if not _chained(times, first, lookback):
            i = first - 1
    return i if i >= 0 else None


# ---------------------------------------------------------------------------------------------
# Coarser levels from finer ones


def combine(rows: Iterable[RollupRow], periodicity: Periodicity, tz: Zone) -> list[RollupRow]:
    """Build `periodicity` rows from rows of a level nesting inside it (see CASCADE_SOURCE).

    Average weighted by count, min of mins, max of maxes, sums of counts and differences,
    the first reading start and the last reading end, status counts merged, tags united.
    Pass every finer row of each coarse bucket wanted: a missing child is read as empty.
    """
    z = zone(tz)
    parents: dict[int, tuple[int, int]] = {}
    groups: dict[tuple[int, str, str, RollupKind, int], list[RollupRow]] = {}
    for r in rows:
        if r.periodicity not in _NESTS_IN[periodicity]:
            raise ValueError(f"{r.periodicity} buckets do not nest inside {periodicity} buckets")
        bounds = parents.get(r.ts_start_ms)
        if bounds is None:
            bounds = parents[r.ts_start_ms] = bucket_bounds(r.ts_start_ms, periodicity, z)
        groups.setdefault((r.node_id, r.source_id, r.property, r.kind, bounds[0]), []).append(r)
    out: list[RollupRow] = []
    for (node_id, source_id, prop, kind, start), children in sorted(groups.items()):
        children.sort(key=lambda r: r.ts_start_ms)
        end = parents[children[0].ts_start_ms][1]
        out.append(_merge((periodicity, node_id, source_id, prop, kind, start, end), children))
    return out


def _sum(values: Iterable[float]) -> float:
    """Floats added one after the other from 0.0: the running sums of
    processors/rollup_incremental.py extend exactly this (the builtin `sum` of Python 3.12 and
    later compensates, so its result depends on the version)."""
    total = 0.0
    for v in values:
        total += v
    return total


# (periodicity, node, source, property, kind, start ms, end ms): a merged row's identity and bounds
_Head = tuple[Periodicity, int, str, str, RollupKind, int, int]


def _merge(head: _Head, children: Sequence[RollupRow]) -> RollupRow:
    # built in one call: dataclasses.replace on a base row cost more than the merge (issue 13)
    kind = head[4]
    n = sum(c.count for c in children)
    tags = tuple(sorted({t for c in children for t in c.tags}))
    if kind == "i":
        mins = [c.min for c in children if c.min is not None]
        maxs = [c.max for c in children if c.max is not None]
        avg = _sum(c.avg * c.count for c in children if c.count and c.avg is not None) / n if n else None
        return RollupRow(*head, n, avg, min(mins) if mins else None, max(maxs) if maxs else None, tags=tags)
    if kind == "s":
        merged: Counter[str] = Counter()
        for c in children:
            merged.update(dict(c.status_counts))
        sc = tuple(sorted(merged.items()))
        return RollupRow(*head, n, mode=_mode(sc), status_counts=sc, tags=tags)
    if kind == "p":
        return RollupRow(*head, n, diff=_sum(c.diff or 0.0 for c in children), tags=tags)
    starts = [c.read_start for c in children if c.read_start is not None]
    ends = [c.read_end for c in children if c.read_end is not None]
    return RollupRow(
        *head,
        n,
        diff=_sum(c.diff or 0.0 for c in children),
        read_diff=_sum(c.read_diff or 0.0 for c in children),
        read_start=starts[0] if starts else None,
        read_end=ends[-1] if ends else None,
        tags=tags,
    )


# A stale bucket of a coarser level: (node, source, start ms, end ms).
Bucket = tuple[int, str, int, int]


def cascade(
    buckets: Mapping[Periodicity, Iterable[Bucket]],
    fresh: Iterable[RollupRow],
    emptied: Iterable[RollupRow],
    stored: Iterable[RollupRow],
) -> tuple[list[RollupRow], list[RollupRow]]:
    """The coarser levels' rows and tombstones of the stale buckets, level by level up from the
    half hours, as `sinks.rollups.cascade_sql` computes them in the store: each bucket's rows
    combined (`_merge`) from the rows of its CASCADE_SOURCE level starting inside it, per
    (property, kind); a tombstone for each stored row of a bucket whose property has no child
    left. `stored`: the live stored rows of those children and of the buckets themselves, read
    before this step wrote anything; `fresh` and `emptied` (tombstones): this step's half hours,
    which replace the stored ones (each level computed here replaces its stored rows in turn).
    Pure, and only for a few buckets (every child a Python object): many go to the store."""
    rows: dict[tuple[Periodicity, int, str], dict[tuple[str, int], RollupRow]] = {}
    for r in stored:
        rows.setdefault((r.periodicity, r.node_id, r.source_id), {})[(r.property, r.ts_start_ms)] = r
    for r in emptied:
        rows.get((r.periodicity, r.node_id, r.source_id), {}).pop((r.property, r.ts_start_ms), None)
    for r in fresh:
        rows.setdefault((r.periodicity, r.node_id, r.source_id), {})[(r.property, r.ts_start_ms)] = r
    out: list[RollupRow] = []
    tombstones: list[RollupRow] = []
    for per in PERIODICITIES[1:]:
        src = CASCADE_SOURCE[per]
        assert src is not None
        for node, source, lo, hi in sorted(set(buckets.get(per, ()))):
            children = rows.get((src, node, source), {})
            mine = rows.setdefault((per, node, source), {})
            groups: dict[tuple[str, RollupKind], list[RollupRow]] = {}
            for (prop, start), r in children.items():
                if lo <= start < hi:
                    groups.setdefault((prop, r.kind), []).append(r)
            have = {prop for prop, _kind in groups}
            for (prop, start), r in list(mine.items()):
                if start == lo and prop not in have:
                    tombstones.append(RollupRow(per, node, source, prop, r.kind, lo, hi))
                    del mine[(prop, start)]
            for (prop, kind), kids in sorted(groups.items()):
                kids.sort(key=lambda r: r.ts_start_ms)
                row = _merge((per, node, source, prop, kind, lo, hi), kids)
                out.append(row)
                mine[(prop, lo)] = row
    return out, tombstones


def rollup_all(
    points: Iterable[RawPoint],
    resets: Iterable[ResetMarker],
    window_start_ms: int,
    window_end_ms: int,
    tz: Zone,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
    node_id: int = 0,
    source_id: str = "",
) -> dict[Periodicity, list[RollupRow]]:
    """Every level for the whole years and ISO weeks around the window, by the cascade:
    halfhour from raw, then hour, day, week, month and year each from its CASCADE_SOURCE."""
    z = zone(tz)
    lo = min(bucket_start(window_start_ms, "year", z), bucket_start(window_start_ms, "week", z))
    last = window_end_ms - 1
    hi = max(bucket_bounds(last, "year", z)[1], bucket_bounds(last, "week", z)[1])
    levels: dict[Periodicity, list[RollupRow]] = {
        "halfhour": recompute(points, resets, lo, hi, "halfhour", z, tolerances, node_id, source_id)
    }
    for per in PERIODICITIES[1:]:
        source = CASCADE_SOURCE[per]
        assert source is not None
        levels[per] = combine(levels[source], per, z)
    return levels


# ---------------------------------------------------------------------------------------------
# Which buckets a change invalidates


def stale_buckets(
    changed_ms: int,
    prev_ms: int | None,
    next_ms: int | None,
    tz: Zone,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
    periodicities: Iterable[Periodicity] = PERIODICITIES,
) -> set[tuple[Periodicity, int]]:
    """Buckets whose rows may change when a raw node at changed_ms is inserted, changed or
    deleted (a reading, or a reset marker).

    prev_ms/next_ms: the nearest chain nodes of the same accumulating property strictly before
    and after changed_ms (readings of it, or resets naming it); None if there is none within
    the clock tolerance before / the look-back tolerance after. For i, s and p properties only
    the bucket holding changed_ms changes, which is always included. Proof: docs/rollups.md.
    """
    z = zone(tz)
    out: set[tuple[Periodicity, int]] = set()
    for per in periodicities:
        # The bucket holding the change, and the one whose (start, end] holds it.
        touched = {changed_ms, changed_ms - 1}
        if next_ms is not None and next_ms - changed_ms <= tolerances.lookback_ms:
            touched.add(next_ms - 1)  # its incoming pair, so its reading difference, changed
        for t in touched:
            out.add((per, bucket_start(t, per, z)))
        # Clock shares change along the pairs on either side, when short enough to count.
        if prev_ms is not None and changed_ms - prev_ms <= tolerances.clock_ms:
            out.update((per, s) for s, _ in buckets_between(prev_ms, changed_ms + 1, per, z))
        if next_ms is not None and next_ms - changed_ms <= tolerances.clock_ms:
            out.update((per, s) for s, _ in buckets_between(changed_ms, next_ms + 1, per, z))
    return out
