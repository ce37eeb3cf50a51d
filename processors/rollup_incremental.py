"""Rollups of appended readings from running sums: a step that does not re-read or re-add what it
already had (issue 13, the fleet's rollup step).

A fleet's rollup step has a new reading in every stream and, computed from the store, costs
about 0.39 ms a stream whatever it carries (docs/hot-path.md): the neighbours and the windows are
read again, the half hours recomputed from their points, every coarser level combined again from
its children. Here one series (a stream's property of one kind, in the node's zone) keeps, per
level, the figures of its open bucket in the form that extends by appending:

- the half hour of its last point: count, the values (or clock shares) added in time order from
  0.0, min, max, the reading difference, the start and end readings, the status counts;
- each coarser level: its open bucket's children before the latest one merged (the prefix), and
  that latest child.

A reading after the series' last one changes only the half hours from the last one's on
(`stale_buckets`: the pair into it, and the bucket holding it). Each figure of those is extended
by exactly the additions `recompute` would make, in the same order (a half hour's values, or a
pair's clock share, are added after the ones before them), so its rows equal `recompute`'s bit
for bit; a coarser row is its prefix with the new latest child added, as `combine` adds its
children in order (processors/rollup.py's `_sum`). tests/unit/test_rollup_incremental.py
compares both under Hypothesis.

Anything else (a reading at or before the last one: late, corrected or a duplicate; a reset
marker; a NaN) raises `NotAnAppend`: the caller recomputes from the store as always and
seeds the series again. A series' state is only valid with what the store holds: whoever drives
it drops it when a step fails. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from processors.rollup import (
    CASCADE_SOURCE,
    DEFAULT_TOLERANCES,
    PERIODICITIES,
    Periodicity,
    RollupKind,
    RollupRow,
    Tolerances,
    Zone,
    _mode,
    bucket_bounds,
    zone,
)

HALFHOUR: Periodicity = "halfhour"
COARSER: tuple[Periodicity, ...] = PERIODICITIES[1:]  # in cascade order: each after its source
# a series: (node, source, property, kind)
SeriesKey = tuple[int, str, str, RollupKind]


class NotAnAppend(ValueError):
    """A change the running sums cannot extend exactly: recompute from the store, seed again."""


@dataclass(slots=True)
class Figures:
    """One bucket's figures so far, in the form that extends exactly.

    total: i the values added (a half hour) or the children's avg x count added (coarser);
    p the values added; a the clock shares added (the row's diff). Unused fields stay as made.
    """

    lo: int
    hi: int
    count: int = 0
    total: float = 0.0
    low: float | None = None
    high: float | None = None
    read_diff: float = 0.0
    read_start: float | None = None
    read_end: float | None = None
    status: dict[str, int] = field(default_factory=dict)
    tags: frozenset[str] = frozenset()

    def copy(self) -> Figures:
        return Figures(
            self.lo,
            self.hi,
            self.count,
            self.total,
            self.low,
            self.high,
            self.read_diff,
            self.read_start,
            self.read_end,
            dict(self.status),
            self.tags,
        )


def _row(per: Periodicity, key: SeriesKey, f: Figures) -> RollupRow:
    node, source, prop, kind = key
    tags = tuple(sorted(f.tags)) if f.tags else ()
    if kind == "i":
        avg = f.total / f.count if f.count else None
        return RollupRow(per, node, source, prop, kind, f.lo, f.hi, f.count, avg, f.low, f.high, tags=tags)
    if kind == "s":
        sc = tuple(sorted(f.status.items()))
        return RollupRow(
            per, node, source, prop, kind, f.lo, f.hi, f.count, mode=_mode(sc), status_counts=sc, tags=tags
        )
    if kind == "p":
        return RollupRow(per, node, source, prop, kind, f.lo, f.hi, f.count, diff=f.total, tags=tags)
    return RollupRow(
        per,
        node,
        source,
        prop,
        kind,
        f.lo,
        f.hi,
        f.count,
        diff=f.total,
        read_diff=f.read_diff,
        read_start=f.read_start,
        read_end=f.read_end,
        tags=tags,
    )


def _absorb(f: Figures, c: RollupRow) -> None:
    """Add child row `c` after the children already in `f`, as `_merge` adds its children."""
    if c.tags:
        f.tags = f.tags.union(c.tags)
    f.count += c.count
    kind = c.kind
    if kind == "i":
        if c.count and c.avg is not None:
            f.total += c.avg * c.count
        if c.min is not None:
            f.low = c.min if f.low is None else min(f.low, c.min)
        if c.max is not None:
            f.high = c.max if f.high is None else max(f.high, c.max)
    elif kind == "s":
        for text, n in c.status_counts:
            f.status[text] = f.status.get(text, 0) + n
    else:
        f.total += c.diff or 0.0
        if kind == "a":
            f.read_diff += c.read_diff or 0.0
            if f.read_start is None:
                f.read_start = c.read_start
            if c.read_end is not None:
                f.read_end = c.read_end


@dataclass(slots=True)
class _Level:
    """A coarser level's open bucket: its children before `child` merged, and `child`."""

    per: Periodicity
    prefix: Figures
    child: RollupRow

    def merged(self) -> Figures:
        f = self.prefix.copy()
        _absorb(f, self.child)
        return f

    def feed(self, key: SeriesKey, z: ZoneInfo, children: Sequence[RollupRow]) -> list[RollupRow]:
        """Take this step's rows of the level below (in order); the rows of this level they
        change: a bucket closed on the way, and the open one."""
        out: list[RollupRow] = []
        for c in children:
            start = c.ts_start_ms
            if start >= self.prefix.hi:
                out.append(_row(self.per, key, self.merged()))
                lo, hi = bucket_bounds(start, self.per, z)
                self.prefix, self.child = Figures(lo, hi), c
            elif start == self.child.ts_start_ms:
                self.child = c
            elif start > self.child.ts_start_ms:
                _absorb(self.prefix, self.child)
                self.child = c
            else:
                raise NotAnAppend(f"a {c.periodicity} before the open {self.per}'s latest")
        if children:
            out.append(_row(self.per, key, self.merged()))
        return out


@dataclass(slots=True)
class SeriesState:
    """One series' open buckets at every level, and its last point (`seed` makes one)."""

    key: SeriesKey
    z: ZoneInfo
    tol: Tolerances
    last_t: int
    last_v: float  # the last reading (a); unused for the other kinds
    halfhour: Figures  # the half hour holding the last point
    levels: dict[Periodicity, _Level]

    def append(
        self,
        times: Sequence[int],
        values: Sequence[float | None],
        texts: Sequence[str | None],
        tags: Sequence[Iterable[str]] | None = None,
    ) -> list[RollupRow]:
        """Points after the last one (ascending): the rows they change, every level, in cascade
        order. A point without a value (or text) counts for nothing, as in `recompute`; `tags`:
        each point's (None: none has any). Raises NotAnAppend (the state is then no longer valid)."""
        kind = self.key[3]
        touched: dict[int, Figures] = {}
        for n, (t, v, x) in enumerate(zip(times, values, texts, strict=True)):
            if t <= self.last_t:
                raise NotAnAppend("a point at or before the last one")
            if kind == "s":
                if x is None:
                    continue
                f = self._at(t, touched)
                f.count += 1
                f.status[x] = f.status.get(x, 0) + 1
                if tags is not None and tags[n]:
                    f.tags = f.tags.union(tags[n])
                self.last_t = t
                continue
            if v is None:
                continue
            if math.isnan(v):
                raise NotAnAppend("a NaN reading")
            if kind == "a":
                f = self._reading(t, v, touched)
            else:
                f = self._at(t, touched)
                f.count += 1
                f.total += v
                if kind == "i":
                    f.low = v if f.low is None else min(f.low, v)
                    f.high = v if f.high is None else max(f.high, v)
            if tags is not None and tags[n]:
                f.tags = f.tags.union(tags[n])  # the bucket holding the point's
            self.last_t, self.last_v = t, v
        rows = {HALFHOUR: [_row(HALFHOUR, self.key, touched[lo]) for lo in sorted(touched)]}
        for per in COARSER:
            source = CASCADE_SOURCE[per]
            assert source is not None
            rows[per] = self.levels[per].feed(self.key, self.z, rows[source])
        return [r for per in PERIODICITIES for r in rows[per]]

    def _at(self, t: int, touched: dict[int, Figures]) -> Figures:
        """The half hour holding t (the current one, or the next one opened)."""
        if t >= self.halfhour.hi:
            lo, hi = bucket_bounds(t, HALFHOUR, self.z)
            self.halfhour = Figures(lo, hi)
        f = self.halfhour
        touched[f.lo] = f
        return f

    def _reading(self, t: int, v: float, touched: dict[int, Figures]) -> Figures:
        """An accumulating reading after the last one: the pair into it (processors/rollup.py's
        `_accumulating`, no reset in between). Returns the half hour holding it."""
        tn, vn, tol = self.last_t, self.last_v, self.tol
        length, inc = t - tn, v - self.last_v
        chained = length <= tol.lookback_ms

        def bucket(lo: int, hi: int) -> Figures:
            f = touched.get(lo)
            if f is None:
                if lo == self.halfhour.lo:
                    f = self.halfhour
                else:
                    # a bucket after the last reading's: `_start_node` finds the last reading
                    # (before it, chained to this one), or this reading, the first inside it
                    first: float | None
                    if t == lo:
                        first = v
                    elif chained:
                        first = vn
                    else:
                        first = v if t < hi else None
                    f = Figures(lo, hi, read_start=first)
                touched[lo] = f
            return f

        if length <= tol.clock_ms:
            lo, hi = self.halfhour.lo, self.halfhour.hi
            while lo < t:
                overlap = min(t, hi) - max(tn, lo)
                if overlap > 0:
                    bucket(lo, hi).total += inc * overlap / length
                lo, hi = hi, bucket_bounds(hi, HALFHOUR, self.z)[1]
        if chained:
            bucket(*bucket_bounds(t - 1, HALFHOUR, self.z)).read_diff += inc
        bucket(*bucket_bounds(t, HALFHOUR, self.z)).count += 1
        # `_end_node`: the latest reading at or before a bucket's end, one exactly at the end
        # only if chained
        for f in touched.values():
            if f.hi <= tn:
                continue  # its latest reading at or before its end is not this one
            if f.read_start is None:
                f.read_end = None
            elif t < f.hi or (t == f.hi and chained):
                f.read_end = v
            else:
                f.read_end = vn
        self.halfhour = touched[bucket_bounds(t, HALFHOUR, self.z)[0]]
        return self.halfhour


def halfhour_figures(row: RollupRow, total: float) -> Figures:
    """The figures of a half hour as `recompute` gave its row; `total`: its values added in time
    order (kind i: the row's avg is that over the count, which does not give it back exactly)."""
    f = Figures(row.ts_start_ms, row.ts_end_ms, row.count, low=row.min, high=row.max)
    f.read_diff, f.read_start, f.read_end = row.read_diff or 0.0, row.read_start, row.read_end
    f.status = dict(row.status_counts)
    f.total = total if row.kind == "i" else row.diff or 0.0
    f.tags = frozenset(row.tags)
    return f


# (level, the level below, start of the level's open bucket, start of its open child)
PrefixRange = tuple[Periodicity, Periodicity, int, int]


def prefix_ranges(last_t: int, tz: Zone) -> list[PrefixRange]:
    """Per coarser level, what its prefix is merged from for a series whose last point is at
    last_t: (level, the level below, start of the open bucket, start of its open child); the
    stored rows of the level below starting in [lo, hi)."""
    z = zone(tz)
    out = []
    for per in COARSER:
        source = CASCADE_SOURCE[per]
        assert source is not None
        out.append((per, source, bucket_bounds(last_t, per, z)[0], bucket_bounds(last_t, source, z)[0]))
    return out


def seed(
    key: SeriesKey,
    tz: Zone,
    last: tuple[int, float],
    half: Figures,
    prefixes: Mapping[Periodicity, Figures],
    tolerances: Tolerances = DEFAULT_TOLERANCES,
) -> SeriesState:
    """A series' state: its last point (created, and the reading for kind a), the figures of that
    point's half hour up to it (`halfhour_figures`), and per coarser level the merged children of
    its open bucket before the open child (`prefix_ranges`; none: an empty prefix). Each open
    child is the level below's open bucket, so it follows from these."""
    z = zone(tz)
    last_t, last_v = last
    if (half.lo, half.hi) != bucket_bounds(last_t, HALFHOUR, z):
        raise NotAnAppend("the half hour given does not hold the last point")
    below: dict[Periodicity, RollupRow] = {HALFHOUR: _row(HALFHOUR, key, half)}
    levels: dict[Periodicity, _Level] = {}
    for per in COARSER:
        source = CASCADE_SOURCE[per]
        assert source is not None
        lo, hi = bucket_bounds(last_t, per, z)
        prefix = prefixes.get(per)
        if prefix is None:
            prefix = Figures(lo, hi)
        elif (prefix.lo, prefix.hi) != (lo, hi):
            raise NotAnAppend(f"the {per} prefix given is not of the last point's {per}")
        levels[per] = level = _Level(per, prefix, below[source])
        below[per] = _row(per, key, level.merged())
    return SeriesState(key, z, tolerances, last_t, last_v, half.copy(), levels)


def seed_from_rows(
    key: SeriesKey,
    tz: Zone,
    last: tuple[int, float],
    halfhour_total: float,
    rows: Iterable[RollupRow],
    tolerances: Tolerances = DEFAULT_TOLERANCES,
) -> SeriesState:
    """`seed` from stored rows: at least the last point's half hour, and the children of every
    open bucket (the half hours of its hour, the hours of its day, the days of its week and its
    month, the months of its year). Raises NotAnAppend when they do not end at the last point's."""
    z = zone(tz)
    last_t = last[0]
    by_level: dict[Periodicity, dict[int, RollupRow]] = {per: {} for per in PERIODICITIES}
    for r in rows:
        if (r.node_id, r.source_id, r.property, r.kind) != key:
            continue
        by_level[r.periodicity][r.ts_start_ms] = r
    own = by_level[HALFHOUR].get(bucket_bounds(last_t, HALFHOUR, z)[0])
    if own is None or own.count == 0:
        raise NotAnAppend("no stored half hour holds the last point")
    prefixes: dict[Periodicity, Figures] = {}
    for per, source, lo, child in prefix_ranges(last_t, z):
        children = sorted((s, r) for s, r in by_level[source].items() if lo <= s < bucket_bounds(lo, per, z)[1])
        if not children or children[-1][0] != child:
            raise NotAnAppend(f"the stored {source}s of the open {per} do not end at the last point's")
        prefixes[per] = prefix = Figures(*bucket_bounds(lo, per, z))
        for _, r in children[:-1]:
            _absorb(prefix, r)
    return seed(key, z, last, halfhour_figures(own, halfhour_total), prefixes, tolerances)
