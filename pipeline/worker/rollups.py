"""Rollups in the running pipeline (design (b)): the buckets a stored batch makes stale are
recomputed from raw (half hours) and cascaded up (hour, day, week, month, year) from the stored
finer rows, replacing the stored rows; a bucket found empty gets a tombstone.

The rollup agent calls `RollupMaintainer.update_spans` with the stale marks of the raw batches
the worker stored (processors/stale_marks.py), before acking them; `update` takes raw rows;
`recompute_range` is `pipeline recompute`. The figures come from the pure module
processors/rollup.py, the SQL from sinks/rollups.py. docs/rollups.md explains the whole.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TypeVar
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from pipeline.progress import Progress
from processors.catalog_versions import TimezoneAt
from processors.point_cache import (
    OPEN,
    Held,
    PointCache,
    Stream,
    nearest_readings,
    spliced,
    trimmed,
    window_rows,
)
from processors.rollup import (
    CASCADE_SOURCE,
    DEFAULT_TOLERANCES,
    PERIODICITIES,
    Periodicity,
    ResetMarker,
    RollupKind,
    RollupRow,
    Tolerances,
    bucket_bounds,
    bucket_start,
    buckets_between,
    stale_buckets,
    zone,
)
from processors.rollup_columns import Series, recompute_series
from processors.rollup_incremental import PrefixRange, prefix_ranges
from processors.rollup_running import (
    KIND_CODES,
    MAX_POINTS,
    NO_READING,
    FreshSeeds,
    Points,
    PrefixFigures,
    RollupColumns,
    RunningRollups,
    level_figs,
    pair_reaches_back,
)
from processors.rows import DAY_MS, RawColumns
from processors.stale_marks import SpanColumns, compact
from sinks.auxiliary import read_resets, streams_with_resets
from sinks.clickhouse import NamedRange, raw_retention_days
from sinks.rollups import (
    COMBINE_BUCKETS,
    NEAR_MS,
    NeighbourRequest,
    PointColumns,
    RollupSink,
    RollupWrite,
    Window,
    cascade_reads,
    read_last_after,
    read_neighbours,
    read_points,
    read_prefixes,
    read_processed_after,
    read_readings_before,
    read_rollup_keys,
    read_rollups,
    read_series_for_recompute,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

HALFHOUR: tuple[Periodicity, ...] = ("halfhour",)
# Which neighbours of a changed accumulating reading are looked up (`stale_halfhours`).
BEFORE, AFTER, BOTH = 1, 2, 3
# Stale half hours closer than this are recomputed as one window (the ones between included).
MERGE_GAP_MS = 6 * 3_600_000
# How long a stream's retention (shortest storage period of its raw rows) is reused before it is
# looked up again.
RETENTION_CACHE_S = 600.0
# Streams of a step whose points the point cache does not hold are read into it only when a few:
# a fleet's step names thousands, each with a few points (reading them as always costs less).
CACHE_FILL_STREAMS = 200
# A stream read in with fewer points than the cache's min_points is sparse only if they span
# this long; before that it is read in again at its next step.
SPARSE_AFTER_MS = 30 * 60_000
# How far past a window a stream's stored rows may reach for its points to be read to the end.
FILL_AHEAD_MS = 6 * 3_600_000
HOUR_MS = 3_600_000
# Streams a step seeds with running rollups at most (`RollupMaintainer._cold`): a seed reads the
# stream's points from the half hour of its first change and every open bucket's merged
# children. A stream not seeded goes to the store's recompute: a fleet's first step seeds all it
# can.
SEED_STREAMS = 50_000
# A stream with more points a series than running rollups take in a step
# (`processors.rollup_running.MAX_POINTS`: a dense stream, each step thousands) is not seeded again
# for this long: its rollups come from the store's recompute and the point cache, and its points
# are not read twice a step.
DENSE_FOR_S = 300.0


@dataclass
class Refresh:
    """What one refresh produced: half hours from raw (and tombstones of those found empty), and
    per coarser level the stale buckets to combine from the level below: by the store
    (`cascade_sql`), or, with few, in the worker from `stored` (`sinks.rollups.combine_here`)."""

    rows: list[RollupRow] = field(default_factory=list)
    tombstones: list[RollupRow] = field(default_factory=list)
    cascade: dict[Periodicity, list[tuple[int, str, int, int]]] = field(
        default_factory=lambda: {p: [] for p in PERIODICITIES[1:]}
    )

    # the stored rows the worker's cascade needs, read with the stale half hours' (or None)
    stored: list[RollupRow] | None = None
    # per stream recomputed here, the points its windows were read with (to seed running rollups)
    plans: list[_Plan] = field(default_factory=list)

    def write(self, columns: RollupColumns | None = None) -> RollupWrite:
        return RollupWrite(self.rows, self.tombstones, self.cascade, self.stored, columns)


def _merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _nearest(a: int | None, b: int | None, pick: Callable[[int, int], int]) -> int | None:
    return b if a is None else a if b is None else pick(a, b)


def spans_of(rows: RawColumns) -> SpanColumns:
    """The spans of stored raw rows, as their stale marks carry them."""
    return compact(rows.node_id, rows.source_id, rows.created, rows.property, rows.kind)


class RollupMaintainer:
    """Keeps the `rollup` table in step with the raw rows the worker stores. Synchronous: the
    worker runs it in a thread. Idempotent: a redelivered batch recomputes the same buckets."""

    def __init__(
        self,
        client: Client,
        timezone_at: TimezoneAt,
        tolerances: Tolerances = DEFAULT_TOLERANCES,
        pulse: Callable[[], frozenset[str]] = frozenset,
        cluster: str = "",
        cache: PointCache | None = None,
        combine_buckets: int = COMBINE_BUCKETS,
        running: RunningRollups | None = None,
        seed_streams: int = SEED_STREAMS,
    ) -> None:
        self.client = client
        # the open buckets of the streams' series as running sums, kept between steps (shared by
        # a worker's lanes): a step of appended readings extends them, not read from the store
        self.running = running
        self.seed_streams = seed_streams
        self.cluster = cluster
        self._dense: dict[Stream, float] = {}  # streams not seeded until then (monotonic s)
        # the recent raw points of the streams, kept between steps (shared by a worker's lanes)
        self.cache = cache
        self._held: dict[Stream, Held] = {}  # a step's own references to what the cache holds
        self._generation = 0
        self._pulse: frozenset[str] | None = None  # a step's PULSE datastreams (the cache's)
        self._with_resets: set[Stream] | None = None  # a step's streams with reset markers
        # set up by whoever runs the maintainer
        self.sink = RollupSink(client, cluster, combine_buckets=combine_buckets)
        self.timezone_at = timezone_at
        self.tol = tolerances
        # identifiers of the PULSE datastreams (their instantaneous samples are summed)
        self.pulse = pulse
        self.last_seconds = 0.0
        self.last_buckets = 0
        self.clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)
        self._retention: dict[tuple[int, str], tuple[float, int]] = {}  # stream -> (looked up, days)
        self.kept_expired = 0  # stored half hours a recompute would have shrunk or tombstoned

    def horizons(self, streams: Iterable[tuple[int, str]]) -> dict[tuple[int, str], int | None]:
        """Per stream, the retention horizon: half hours starting at or before it may have lost raw
        rows to expiry (docs/rollups.md). None: its raw rows never expire. A stream with no raw
        rows left at all has every bucket behind the horizon."""
        now_ms, mono = self.clock_ms(), time.monotonic()
        wanted = set(streams)
        missing = [k for k in wanted if k not in self._retention or mono - self._retention[k][0] > RETENTION_CACHE_S]
        if missing:
            found = raw_retention_days(self.client, missing)
            for k, days in found.items():
                self._retention[k] = (mono, days)
        out: dict[tuple[int, str], int | None] = {}
        for k in wanted:
            hit = self._retention.get(k)
            if hit is None:
                out[k] = now_ms  # nothing raw: a recompute could only erase
            else:
                out[k] = None if hit[1] == 0 else now_ms - hit[1] * DAY_MS
        return out

    # -- the worker's entry point ---------------------------------------------------------------

    def update(self, rows: RawColumns) -> int:
        """Recompute every bucket the stored rows make stale; returns buckets written."""
        return self.update_spans(spans_of(rows))

    def update_spans(self, spans: SpanColumns) -> int:
        """Recompute every bucket the changed readings make stale, given per stream their spans
        (property, kind, first and last changed created of a half hour: the stale marks);
        returns buckets written.

        A handful of queries per batch whatever the number of streams: neighbours of the
        changed readings, raw points of the stale windows, stored rows to cascade, one insert."""
        t0 = time.perf_counter()
        appended = _Appended(spans)
        try:
            self._with_resets = streams_with_resets(self.client)
            if self.running is not None:
                appended = self._append(spans, self.running)
            if self.cache is not None and appended.kept:
                # their points changed without being spliced in: read again if they come back
                self.cache.drop(appended.kept)
            if self.cache is not None:
                self._hold(appended.rest, self.cache)
            stale = self.stale_of_spans(appended.rest)
            out = self.refresh([(n, s, tz, st) for (n, s, tz), st in stale.items()])
            written = self.sink.write(out.write(appended.columns))
            if self.running is not None:
                # only now: what the states say is stored
                self.running.put(appended.kept, appended.generation)
                self.running.release(
                    {k: v for k, v in appended.taken.items() if k not in appended.kept}, appended.generation
                )
                appended.taken = {}
        except BaseException:
            if self.running is not None:
                # a failed step keeps none of the states it took (the store may hold some of its rows)
                self.running.release(appended.taken, appended.generation)
            # a step that failed may not have re-read all it was told changed
            if self.cache is not None:
                self.cache.clear()
            raise
        finally:
            self._held, self._pulse, self._with_resets = {}, None, None
        self.last_seconds = time.perf_counter() - t0
        self.last_buckets = written
        log.debug("rollups: %d bucket(s) from %d span(s) in %.3fs", written, len(spans), self.last_seconds)
        return written

    # -- running rollups (processors/rollup_incremental.py) ---------------------------------------

    def _append(self, spans: SpanColumns, running: RunningRollups) -> _Appended:
        """The streams whose every span only appends to series held in running rollups: their new
        points read (one query), appended, and the rows of every level they change. Streams not
        held are seeded where they can be (`_cold`) and appended alike. The others (a late or
        corrected reading, a reset marker, a zone change, a new property, a dense stream) are
        left for the store's recompute (`rest`); the states of those are dropped."""
        pulse = self._pulse = self.pulse()
        running.use_pulse(pulse)
        out = _Appended(SpanColumns(), generation=running.generation)
        spans_of: dict[Stream, list[int]] = {}
        for i, stream in enumerate(zip(spans.node_id, spans.source_id, strict=True)):
            spans_of.setdefault(stream, []).append(i)
        out.taken = taken = running.take(spans_of)
        horizon = self.horizons(spans_of) if spans_of else {}
        last_t, lo0, zones = running.last_t, running.lo[0], running.zone
        resets = self._with_resets or set()
        reach: dict[Stream, tuple[int, int]] = {}
        for stream, slots in taken.items():
            mine = spans_of[stream]
            first, last = min(spans.first[i] for i in mine), max(spans.last[i] for i in mine)
            z = zones[next(iter(slots.values()))]
            h = horizon.get(stream)
            if (
                stream not in resets
                and all(spans.property[i] in slots and spans.first[i] > last_t[slots[spans.property[i]]] for i in mine)
                and self.timezone_at(stream[0], first) == z.key == self.timezone_at(stream[0], last)
                and (h is None or all(lo0[k] > h for k in slots.values()))
            ):
                reach[stream] = (first, last)
        ranges = [(q, node, source, lo, hi + 1) for q, ((node, source), (lo, hi)) in enumerate(reach.items())]
        order = list(reach)
        points = None
        if ranges:
            got = read_points(self.client, ranges, pulse)
            if got.num_rows:
                points = _new_points(PointColumns.of(got), [taken[stream] for stream in order], last_t)
        self._appended(out, running, order, {stream: taken[stream] for stream in reach}, points)
        fell_back = len(taken) - len(out.kept)
        now = time.monotonic()
        cold = [
            stream
            for stream in spans_of
            if stream not in taken and stream not in resets and self._dense.get(stream, 0.0) <= now
        ][: self.seed_streams]
        if cold:
            seeded = self._cold(cold, spans_of, spans, horizon, running, pulse)
            taken.update(seeded.taken)
            out.kept.update(seeded.kept)
            out.appended += seeded.appended
            if seeded.columns is not None:
                if out.columns is None:
                    out.columns = seeded.columns
                else:
                    out.columns.chunks += seeded.columns.chunks
                    out.columns.rows += seeded.columns.rows
            running.count(seeded=seeded.series)
            fell_back += len(cold) - len(seeded.kept)  # tried and sent to the store
        for stream, mine in spans_of.items():
            if stream not in out.kept:
                out.rest.add(
                    stream[0],
                    stream[1],
                    [spans.property[i] for i in mine],
                    [spans.kind[i] for i in mine],
                    [spans.first[i] for i in mine],
                    [spans.last[i] for i in mine],
                )
        running.count(appended=out.appended, fell_back=fell_back)
        return out

    def _cold(
        self,
        streams: Sequence[Stream],
        spans_of: Mapping[Stream, list[int]],
        spans: SpanColumns,
        horizon: Mapping[Stream, int | None],
        running: RunningRollups,
        pulse: frozenset[str],
    ) -> _Appended:
        """Running rollups for streams that have none (a stream's first step, after a restart, a
        rebalance, or a step the store recomputed): each series seeded at the start of the half
        hour X holding the stream's first change (`FreshSeeds`: nothing of X, its last
        accumulating reading before X, each coarser level's children before X's merged in the
        store), then given its points from X to the step's last and appended like the others —
        the store's points of X replayed, the step's added.

        Four reads for all the streams: their points from X on, the last accumulating readings
        before X, whether the store counts a point after the step's last already (the rollup
        ledger: the rows written would leave it out), the merged children. A stream is left to
        the store's recompute where the appends would not give the store's rows exactly: a zone
        change, the retention horizon at or after X, a counted point after its last, a changed
        reading no longer there or without a value (its half hour may need a tombstone), an
        accumulating pair into X's first reading that is new and reaches back before X, a
        property of two kinds, or more than MAX_POINTS points a series (a dense stream: not tried
        again for DENSE_FOR_S)."""
        out = _Appended(SpanColumns())
        plan: list[_Cold] = []
        for stream in streams:
            mine = spans_of[stream]
            first, last = min(spans.first[i] for i in mine), max(spans.last[i] for i in mine)
            z = self.timezone_at(stream[0], first)
            x_lo = bucket_bounds(first, "halfhour", z)[0]
            h = horizon.get(stream)
            if z == self.timezone_at(stream[0], last) == self.timezone_at(stream[0], x_lo) and (h is None or x_lo > h):
                plan.append(_Cold(stream, z, first, last, x_lo))
        if not plan:
            return out
        table = read_points(self.client, [(q, *c.stream, c.x_lo, c.last + 1) for q, c in enumerate(plan)], pulse)
        if not table.num_rows:
            return out
        read = _ColdSeries(PointColumns.of(table))
        dense = read.dense()
        refused = dense | read.two_kinds() | read.changes_missing(plan, spans_of, spans)
        now = time.monotonic()
        if len(self._dense) > 10_000:
            self._dense = {k: until for k, until in self._dense.items() if until > now}
        self._dense.update((plan[q].stream, now + DENSE_FOR_S) for q in dense)
        # a counted point after the step's last (as far as its year bucket reaches)
        after = [
            (q, *c.stream, c.last + 1, bucket_bounds(c.last, "year", c.zone)[1])
            for q, c in enumerate(plan)
            if q not in refused
        ]
        refused |= read_processed_after(self.client, after, cluster=self.cluster) if after else set()
        # accumulating series: the last reading before X, and whether a new pair reaches back
        acc = [g for g, k in enumerate(read.kind) if k == "a" and read.q[g] not in refused]
        before = read_readings_before(self.client, read.before_x(acc, plan, self.tol.lookback_ms)) if acc else {}
        refused |= read.reaching_back(acc, before, plan, self.tol)
        groups = [g for g in range(len(read.q)) if read.q[g] not in refused]
        if not groups:
            return out
        # each coarser level's children before X's, merged in the store
        levels = {q: _prefix_ranges(plan[q].x_lo, plan[q].zone) for q in sorted({read.q[g] for g in groups})}
        prefixes = read_prefixes(
            self.client,
            [
                (q * 8 + k, *plan[q].stream, src, lo, child)
                for q, ls in levels.items()
                for k, (_per, src, lo, child) in enumerate(ls)
            ],
        )
        slots_of: list[dict[str, int]] = [{} for _ in plan]
        seeds = read.seeds(groups, plan, levels, prefixes, before)
        for g, k1 in zip(groups, running.store_fresh(seeds), strict=True):
            slots_of[read.q[g]][read.prop[g]] = k1
        out.taken = {plan[q].stream: slots for q, slots in enumerate(slots_of) if slots}
        out.series = len(groups)
        points = _new_points(read.c, slots_of, running.last_t)
        self._appended(out, running, [c.stream for c in plan], out.taken, points)
        return out

    def _appended(
        self,
        out: _Appended,
        running: RunningRollups,
        order: Sequence[Stream],
        slots: Mapping[Stream, dict[str, int]],
        points: Points | None,
    ) -> None:
        """The points appended (`order`: the streams `points.stream` indexes): into `out` the
        rows, the streams kept (of `slots`, those that did not fall back) and the series steps
        appended (the series with points of the streams kept)."""
        out.columns, fell = running.append_points(order, points, self.tol) if points else (None, set())
        out.kept = {stream: mine for stream, mine in slots.items() if stream not in fell}
        if points is not None:
            kept = np.asarray([stream in out.kept for stream in order], np.bool_)
            out.appended = _series_in(points.slot[kept[points.stream] & (points.slot >= 0)])

    # -- the point cache (processors/point_cache.py) ----------------------------------------------

    def _hold(self, spans: SpanColumns, cache: PointCache) -> None:
        """A step's start: take what the cache holds of the spans' streams and re-read from the
        store every point the spans say changed inside it (written since it was read); read in
        the streams it does not hold, from as far back as the step can look to their end."""
        self._pulse = self.pulse()
        cache.use_pulse(self._pulse)
        self._generation = cache.generation
        held = cache.take(zip(spans.node_id, spans.source_id, strict=True))
        # what an append's step needs of the past: its windows start a clock tolerance and a half
        # hour before its first change, and read a clock tolerance before that
        keep = 2 * self.tol.clock_ms + HOUR_MS
        changed: dict[Stream, dict[str, list[tuple[int, int]]]] = {}
        reach: dict[Stream, tuple[int, int]] = {}  # streams not held: their first and last change
        now_s = time.monotonic()
        for node, source, prop, lo, hi in zip(
            spans.node_id, spans.source_id, spans.property, spans.first, spans.last, strict=True
        ):
            k = (node, source)
            h = held.get(k)
            if h is not None:
                if max(lo, h.lo) < min(hi + 1, h.hi):
                    changed.setdefault(k, {}).setdefault(prop, []).append((lo, hi + 1))
            elif not cache.is_sparse(k, now_s):
                was = reach.get(k, (lo, hi))
                reach[k] = (min(was[0], lo), max(was[1], hi))
        out = self._respliced(held, changed, keep, cache)
        if reach and len(reach) <= CACHE_FILL_STREAMS:
            out += self._read_in(reach, keep, cache)
        self._held = {**held, **dict(out)}  # this step's, whatever the cache keeps
        # few points over a while: sparse (a new stream's first few points tell nothing yet)
        sparse = {k for k, h in out if len(h) < cache.min_points and h.span() >= SPARSE_AFTER_MS}
        cache.too_sparse(sparse, now_s)
        cache.drop(sparse)
        cache.put([(k, h) for k, h in out if k not in sparse], self._generation)

    def _respliced(
        self,
        held: Mapping[Stream, Held],
        changed: Mapping[Stream, Mapping[str, list[tuple[int, int]]]],
        keep: int,
        cache: PointCache,
    ) -> list[tuple[Stream, Held]]:
        """The held streams with their changed spans read again and spliced in, trimmed to what
        the next step can need."""
        ranges: list[tuple[int, int, str, str, int, int]] = []
        mine: dict[Stream, list[tuple[str, int, int]]] = {}  # per stream, its (property, lo, hi) re-read
        for (node, source), props in changed.items():
            h = held[(node, source)]
            for prop, spans_of_prop in props.items():
                for lo, hi in _merge_ranges(spans_of_prop):
                    ranges.append((len(ranges), node, source, prop, max(lo, h.lo), min(hi, h.hi)))
                    mine.setdefault((node, source), []).append(ranges[-1][3:])
        out: list[tuple[Stream, Held]] = []
        if not ranges:
            return out
        fresh = read_points(self.client, ranges, self._pulse or frozenset())
        # the ranges of a stream are consecutive qs: its rows, one slice of the sorted read
        ends = np.searchsorted(fresh.column("q").to_numpy(), np.cumsum([len(m) for m in mine.values()]), "left")
        start = 0
        for (stream, its), end in zip(mine.items(), ends.tolist(), strict=True):
            h = spliced(held[stream], its, fresh.slice(start, end - start))
            start = end
            # what this step's changes need of the past is kept too (a backlog's step spans hours)
            newest = min(h.newest() or 0, *(lo for _prop, lo, _hi in its))
            if h.hi == OPEN and newest - keep > h.lo + HOUR_MS:
                h = trimmed(h, newest - keep)
            out.append((stream, h))
        cache.count(respliced=len(ranges))
        return out

    def _read_in(
        self, reach: Mapping[Stream, tuple[int, int]], keep: int, cache: PointCache
    ) -> list[tuple[Stream, Held]]:
        """Streams the cache does not hold, read in from `keep` before their first change to their
        end (when that is near their last change: the datum agent ahead of the rollups). Not one
        with stored rows far beyond this step's changes (a backfill: its windows are read as
        always)."""
        streams = list(reach)
        ahead = read_last_after(
            self.client,
            [(q, node, source, reach[(node, source)][1] + 1, OPEN) for q, (node, source) in enumerate(streams)],
        )
        ranges: list[tuple[int, int, str, int, int]] = []
        for q, (node, source) in enumerate(streams):
            first, last = reach[(node, source)]
            end = ahead.get(q, last)
            if end - last <= FILL_AHEAD_MS:
                ranges.append((len(ranges), node, source, first - keep, end + 1))
        if not ranges:
            return []
        table = read_points(self.client, ranges, self._pulse or frozenset())
        cuts = np.searchsorted(table.column("q").to_numpy(), range(len(ranges) + 1), "left").tolist()
        cache.count(filled=len(ranges))
        return [
            ((node, source), Held.read(lo, OPEN, table.slice(cuts[q], cuts[q + 1] - cuts[q])))
            for q, node, source, lo, _hi in ranges
        ]

    def _served(self, windows: Sequence[Window]) -> tuple[list[int], pa.Table | None]:
        """The windows the held points answer, and those points as `read_series_for_recompute`
        takes them."""
        if self.cache is None:
            return [], None
        near = self.tol.clock_ms + 1
        served: list[int] = []
        rows: list[pa.Table] = []
        for n, w in enumerate(windows):
            h = self._held.get((w.node_id, w.source_id))
            if h is not None and h.covers(w.start_ms - near, w.end_ms + near):
                served.append(n)
                rows.append(window_rows(h, n, w.start_ms, w.end_ms, near))
        self.cache.count(served=len(served))
        return served, (pa.concat_tables(rows) if rows else None)

    def _neighbours(self, asked: Sequence[NeighbourRequest]) -> list[tuple[int | None, int | None]]:
        """`read_neighbours` of the requests, the readings of held streams from the cache (their
        reset markers from the store)."""
        clock, lookback = self.tol.clock_ms, self.tol.lookback_ms
        held: list[int] = []
        stored: list[int] = []
        for i, r in enumerate(asked):
            h = self._held.get((r.node_id, r.source_id))
            ok = h is not None and h.covers(r.at_ms - clock, min(r.at_ms + lookback + 1, OPEN))
            (held if ok else stored).append(i)
        out: list[tuple[int | None, int | None]] = [(None, None)] * len(asked)
        if stored:
            found = read_neighbours(self.client, [asked[i] for i in stored], clock, lookback)
            for i, got in zip(stored, found, strict=True):
                out[i] = got
        if held:
            markers = self._where_resets(
                [(asked[i].node_id, asked[i].source_id) for i in held],
                lambda ks: read_neighbours(self.client, [asked[held[k]] for k in ks], clock, lookback, readings=False),
            )
            resets = [markers.get(k, (None, None)) for k in range(len(held))]
            for i, (reset_prev, reset_next) in zip(held, resets, strict=True):
                r = asked[i]
                prev, nxt = nearest_readings(
                    self._held[(r.node_id, r.source_id)], r.property, r.at_ms, clock, lookback, r.before, r.after
                )
                out[i] = (_nearest(prev, reset_prev, max), _nearest(nxt, reset_next, min))
        return out

    def _where_resets(self, streams: Sequence[Stream], read: Callable[[list[int]], Sequence[T]]) -> dict[int, T]:
        """What `read` finds for the positions (in `streams`) of the streams with reset markers, by
        position: the others have no marker to find. The streams with markers are the step's, or
        looked up now (outside a step)."""
        with_resets = self._with_resets if self._with_resets is not None else streams_with_resets(self.client)
        ask = [k for k, stream in enumerate(streams) if stream in with_resets]
        return dict(zip(ask, read(ask) if ask else [], strict=True))

    def stale_of_spans(self, spans: SpanColumns) -> dict[tuple[int, str, str], set[int]]:
        """Per (node, source, zone): the stale half-hour starts of the spans' changed readings.

        Equal to `stale_halfhours` of every changed reading (docs/rollups.md, "Stale marks"): a
        span's two ends stand for the readings between them, and a half hour lying strictly
        between the ends' half hours (only where an offset change splits one) is stale too."""
        zones: dict[tuple[int, int], str] = {}

        def zone_at(node: int, ms: int) -> str:
            tz = zones.get((node, ms))
            if tz is None:
                zones[(node, ms)] = tz = self.timezone_at(node, ms)
            return tz

        changes: dict[tuple[int, str, str], list[tuple[str, str, int, int]]] = {}
        inside: dict[tuple[int, str, str], list[tuple[int, int]]] = {}
        for node, source, prop, kind, lo, hi in zip(
            spans.node_id, spans.source_id, spans.property, spans.kind, spans.first, spans.last, strict=True
        ):
            tz = zone_at(node, lo)
            # a span across a change of the node's zone counts in both (rare: a superset)
            for z in (tz,) if hi == lo or zone_at(node, hi) == tz else (tz, zone_at(node, hi)):
                key = (node, source, z)
                got = changes.get(key)
                if got is None:
                    changes[key] = got = []
                # A span's first reading needs only its neighbour before, its last only the one
                # after: the other neighbour of either lies within the span (or is the other's),
                # whose half hours are stale already (docs/rollups.md, "Stale marks").
                got.append((prop, kind, lo, BOTH if hi == lo else BEFORE))
                if hi != lo:
                    got.append((prop, kind, hi, AFTER))
                    if hi - lo > 1:
                        inside.setdefault(key, []).append((lo, hi))
        tasks = list(changes)
        stale = self.stale_halfhours([(n, s, tz, changes[(n, s, tz)]) for n, s, tz in tasks])
        for key, found in zip(tasks, stale, strict=True):
            zi = zone(key[2])
            for lo, hi in inside.get(key, ()):
                end = bucket_bounds(lo, "halfhour", zi)[1]
                if end <= hi:
                    found.update(s for s, _ in buckets_between(end, bucket_start(hi, "halfhour", zi), "halfhour", zi))
        return dict(zip(tasks, stale, strict=True))

    # -- which half hours are stale -------------------------------------------------------------

    def stale_halfhours(
        self, tasks: Sequence[tuple[int, str, str, Sequence[tuple[str, str, int, int]]]]
    ) -> list[set[int]]:
        """Per (node, source, zone, changes): the half-hour starts made stale by new or rewritten
        raw rows (property, kind, created, which neighbours count: BEFORE, AFTER or BOTH), each
        accumulating reading's neighbours taken from the stored raw rows."""
        # per task, its changed accumulating readings: each needs the neighbours it names
        acc: list[list[tuple[int, str, int]]] = []
        for _node, _source, _tz, items in tasks:
            sides: dict[tuple[int, str], int] = {}
            for p, kind, c, side in items:
                if kind == "a":
                    sides[(c, p)] = sides.get((c, p), 0) | side
            acc.append(sorted((c, p, side) for (c, p), side in sides.items()))
        asked = [
            NeighbourRequest(node, source, p, t, before=bool(side & BEFORE), after=bool(side & AFTER))
            for (node, source, _tz, _items), mine in zip(tasks, acc, strict=True)
            for t, p, side in mine
        ]
        # readings and reset markers: both are chain nodes
        found = iter(self._neighbours(asked))
        out: list[set[int]] = []
        for (_node, _source, tz, items), mine in zip(tasks, acc, strict=True):
            z = zone(tz)
            stale: set[int] = set()
            for t in {c for _, _, c, _ in items}:
                stale |= {s for _, s in stale_buckets(t, None, None, z, self.tol, HALFHOUR)}
            for t, _prop, _side in mine:
                prev, nxt = next(found)  # in the order asked
                stale |= {s for _, s in stale_buckets(t, prev, nxt, z, self.tol, HALFHOUR)}
            out.append(stale)
        return out

    # -- recompute and cascade ------------------------------------------------------------------

    def refresh(self, tasks: Sequence[tuple[int, str, str, Iterable[int]]]) -> Refresh:
        """Per (node, source, zone, stale half-hour starts): recompute those half hours from raw,
        and list every coarser bucket holding one of them, for the store to combine from the
        stored finer rows once the half hours are in (`RollupSink.write`). Three queries for all
        tasks: raw windows, resets, stored half hours (`stale_of_spans` looked the neighbours up
        before)."""
        plans: list[_Plan] = []
        windows: list[Window] = []
        horizon = self.horizons((node, source) for node, source, _tz, stale in tasks if stale)
        for node, source, tz, stale in tasks:
            plan = _Plan(node, source, zone(tz), horizon_ms=horizon.get((node, source)))
            starts = sorted(set(stale))
            if not starts:
                continue
            # close stale half hours share a window, and the half hours between turn stale
            for s in starts:
                e = bucket_bounds(s, "halfhour", plan.z)[1]
                if plan.windows and s - plan.windows[-1][1] <= MERGE_GAP_MS:
                    plan.windows[-1] = (plan.windows[-1][0], e)
                else:
                    plan.windows.append((s, e))
            windows += [Window(node, source, ws, we) for ws, we in plan.windows]
            plans.append(plan)
        pulse = self.pulse() if self._pulse is None else self._pulse
        served, held = self._served(windows)
        series = iter(read_series_for_recompute(self.client, windows, self.tol, pulse, served, held))
        # Every reset that can be a chain node of a window's pairs; older ones change nothing.
        near = max(NEAR_MS, self.tol.clock_ms + 1)
        reach = [(w.node_id, w.source_id, w.start_ms - self.tol.lookback_ms, w.end_ms + near) for w in windows]
        markers = self._where_resets(
            [r[:2] for r in reach], lambda ns: read_resets(self.client, [reach[n] for n in ns])
        )
        resets = iter([markers.get(n, []) for n in range(len(windows))])
        for plan in plans:
            plan.fill(series, resets, self.tol)
        # with the cascade combined here, the rows it needs come in the same read
        here = self.sink.combines_here(sum(len(p.bounds[per]) for p in plans for per in PERIODICITIES[1:]))
        if here:
            found = read_rollups(self.client, [(p.node, p.source, p.ranges() + p.children()) for p in plans])
        else:
            found = read_rollups(self.client, [(p.node, p.source, p.ranges()) for p in self._with_stored_cases(plans)])
        stored: dict[tuple[int, str], list[RollupRow]] = {}
        for r in found:
            stored.setdefault((r.node_id, r.source_id), []).append(r)
        out = Refresh(stored=found if here else None, plans=plans)
        for plan in plans:
            plan.halfhours(stored.get((plan.node, plan.source), []), out)
            self.kept_expired += plan.kept_expired
        return out

    def _with_stored_cases(self, plans: Sequence[_Plan]) -> list[_Plan]:
        """The plans whose stored half hours `_Plan.halfhours` has something to do with: one that
        no fresh row replaces (a tombstone's), or one behind the retention horizon (kept if the
        recompute finds fewer samples). The stored rows of the others change nothing, so only
        their keys are read (`read_rollup_keys`), and the whole rows of these plans only."""
        keys: dict[tuple[int, str], list[tuple[str, int]]] = {}
        for node, source, prop, start in read_rollup_keys(self.client, [(p.node, p.source, p.ranges()) for p in plans]):
            keys.setdefault((node, source), []).append((prop, start))
        out: list[_Plan] = []
        for plan in plans:
            mine = keys.get((plan.node, plan.source), [])
            if not mine:
                continue
            fresh = plan.fresh_keys()
            if any(plan.tombstoned(key, fresh) or plan.may_keep(key[1]) for key in mine):
                out.append(plan)
        return out


@dataclass(frozen=True)
class _Cold:
    """A stream `_cold` tries to seed: its zone, its step's first change and last reading, and X
    (the start of the half hour of its first change)."""

    stream: Stream
    zone: str
    first: int
    last: int
    x_lo: int


class _ColdSeries:
    """The points `_cold` read (q: the stream's place in its plan), by series: what refuses a
    stream, and the seeds of the rest. No I/O."""

    def __init__(self, c: PointColumns) -> None:
        self.c = c
        self.ends = np.append(c.starts[1:], len(c.t))
        self.q: list[int] = c.q[c.starts].astype(np.int64).tolist()
        self.prop = [c.props[i] for i in c.pi[c.starts].tolist()]
        self.kind = [c.kinds[i] for i in c.ki[c.starts].tolist()]
        # what a recompute counts: a value, or a status (its text, even '')
        self.counted = ~c.null | np.asarray([k == "s" for k in c.kinds], np.bool_)[c.ki]

    def dense(self) -> set[int]:
        """Streams with more points a series than running rollups take a step."""
        return {self.q[g] for g in np.flatnonzero((self.ends - self.c.starts) > MAX_POINTS).tolist()}

    def two_kinds(self) -> set[int]:
        """Streams with a property of two kinds (its series would share a slot name)."""
        seen: set[tuple[int, str]] = set()
        out: set[int] = set()
        for q, prop in zip(self.q, self.prop, strict=True):
            if (q, prop) in seen:
                out.add(q)
            seen.add((q, prop))
        return out

    def changes_missing(
        self, plan: Sequence[_Cold], spans_of: Mapping[Stream, list[int]], spans: SpanColumns
    ) -> set[int]:
        """Streams with a span whose last changed reading is not there or not counted (its half
        hour may need a tombstone, which appends never write)."""
        c, out = self.c, set()
        group_of = {(q, prop): g for g, (q, prop) in enumerate(zip(self.q, self.prop, strict=True))}
        base = int(c.t.min())
        # (series, created) as one sortable key: the points are sorted by q, p, k, t
        keys = (np.repeat(np.arange(len(self.q), dtype=np.int64), self.ends - c.starts) << 40) | (c.t - base)
        asked_q, asked = [], []
        for q, cold in enumerate(plan):
            for i in spans_of[cold.stream]:
                g = group_of.get((q, spans.property[i]))
                if g is None or spans.last[i] < base:
                    out.add(q)
                else:
                    asked_q.append(q)
                    asked.append((g << 40) | (spans.last[i] - base))
        have = keys[self.counted]
        if asked and len(have):
            want = np.asarray(asked, np.int64)
            missing = have[np.minimum(np.searchsorted(have, want), len(have) - 1)] != want
            out.update(np.asarray(asked_q, np.int64)[missing].tolist())
        elif asked:
            out.update(asked_q)
        return out

    def before_x(self, acc: Sequence[int], plan: Sequence[_Cold], lookback_ms: int) -> list[NamedRange]:
        """Where each accumulating series' last reading before X is looked for: the look-back."""
        out: list[NamedRange] = []
        for g in acc:
            cold = plan[self.q[g]]
            out.append((g, cold.stream[0], cold.stream[1], self.prop[g], cold.x_lo - lookback_ms, cold.x_lo))
        return out

    def reaching_back(
        self, acc: Sequence[int], before: Mapping[int, tuple[int, float]], plan: Sequence[_Cold], tol: Tolerances
    ) -> set[int]:
        """Streams with an accumulating series (of `acc`) whose first reading from X on is new
        (at or after the stream's first change) and whose pair from the reading before X gives a
        bucket before X something (`pair_reaches_back`): the stored rows do not have it yet."""
        out: set[int] = set()
        for g in acc:
            a, b = int(self.c.starts[g]), int(self.ends[g])
            firsts = np.flatnonzero(self.counted[a:b])
            if not len(firsts):
                continue
            cold, p1, prev = plan[self.q[g]], int(self.c.t[a + int(firsts[0])]), before.get(g)
            if p1 >= cold.first and pair_reaches_back(None if prev is None else prev[0], p1, cold.x_lo, tol):
                out.add(self.q[g])
        return out

    def seeds(
        self,
        groups: Sequence[int],
        plan: Sequence[_Cold],
        levels: Mapping[int, Sequence[PrefixRange]],
        prefixes: Mapping[tuple[int, str, RollupKind], PrefixFigures],
        before: Mapping[int, tuple[int, float]],
    ) -> FreshSeeds:
        """The series `groups` seeded fresh at their stream's X: each coarser level's bucket
        holding X with the merged children `prefixes` found (keyed q * 8 + level), the last
        accumulating reading before X."""
        kinds = np.asarray([KIND_CODES.get(self.kind[g], 0) for g in groups], np.int8)
        bounds_of = {q: [bucket_bounds(lo, per, plan[q].zone) for per, _s, lo, _c in ls] for q, ls in levels.items()}
        figs = []
        for k in range(len(PERIODICITIES) - 1):
            bounds = np.asarray([bounds_of[self.q[g]][k] for g in groups], np.int64).reshape(-1, 2)
            found = {}
            for m, g in enumerate(groups):
                got = prefixes.get((self.q[g] * 8 + k, self.prop[g], self.kind[g]))
                if got is not None:
                    found[m] = got
            figs.append(level_figs(bounds[:, 0], bounds[:, 1], kinds, found))
        prev = [before.get(g) if self.kind[g] == "a" else None for g in groups]
        return FreshSeeds(
            np.asarray([plan[self.q[g]].stream[0] for g in groups], np.int64),
            [plan[self.q[g]].stream[1] for g in groups],
            [self.prop[g] for g in groups],
            [self.kind[g] for g in groups],
            [zone(plan[self.q[g]].zone) for g in groups],
            np.asarray([plan[self.q[g]].x_lo for g in groups], np.int64),
            np.asarray([NO_READING if pv is None else pv[0] for pv in prev], np.int64),
            np.asarray([np.nan if pv is None else pv[1] for pv in prev], np.float64),
            figs,
        )


def _series_in(slots: npt.NDArray[np.int64]) -> int:
    """How many series a step's points (sorted by stream, slot, created) are of."""
    return int(len(slots) and 1 + np.count_nonzero(slots[1:] != slots[:-1]))


# A fleet's streams share their half hours: the same X and zone, thousands of times a step.
_prefix_ranges = lru_cache(maxsize=4096)(prefix_ranges)


def _new_points(c: PointColumns, slots: Sequence[Mapping[str, int]], last_t: npt.NDArray[np.int64]) -> Points | None:
    """A `read_points` result (q, t, p, k, v, x, g sorted by q, p, k, t; q the stream's place in
    `slots`) as running rollups take it: each row's series slot (-1: not held), only the rows
    after their series' last point. No Python object per row but the texts."""
    n = len(c.t)
    if n == 0:
        return None
    q = c.q.astype(np.int64)
    codes = np.asarray([KIND_CODES.get(x, 0) for x in c.kinds], np.int8)[c.ki]
    group_slot = np.asarray(
        [slots[a].get(c.props[b], -1) for a, b in zip(q[c.starts].tolist(), c.pi[c.starts].tolist(), strict=True)],
        np.int64,
    )
    slot = np.repeat(group_slot, np.diff(np.append(c.starts, n)))
    keep = (slot < 0) | (c.t > last_t[np.where(slot >= 0, slot, 0)])
    rows = np.flatnonzero(keep)
    if not len(rows):
        return None
    picked = pa.array(rows)
    return Points(
        q[rows],
        slot[rows],
        codes[rows],
        c.t[rows],
        c.value[rows],
        # a status has its text, never a value: a missing one is counted as it is, ''
        c.null[rows] & (codes[rows] != 3),
        c.x.take(picked).to_pylist(),
        [tuple(tg) for tg in c.g.take(picked).to_pylist()] if c.tagged[rows].any() else None,
    )


@dataclass
class _Appended:
    """What a step's running rollups did: the spans left for the store's recompute, the rows of
    the appends, the states kept in step (put back after the write), the generation they were
    taken in."""

    rest: SpanColumns
    columns: RollupColumns | None = None
    taken: dict[Stream, dict[str, int]] = field(default_factory=dict)  # slots, until put or released
    appended: int = 0  # series appended to
    kept: dict[Stream, dict[str, int]] = field(default_factory=dict)
    generation: int = 0
    series: int = 0  # series seeded (`_cold`)


class RollupLanes:
    """Several maintainers, each with its own client, recomputing the streams of one batch of
    marks side by side, no stream in two lanes (`SpanColumns.lanes`).

    One lane's step alternates between Python (the stale half hours, the half hours from raw) and
    waiting for the store (reads, the cascade's statements). Two lanes let one compute while the
    other waits. Streams are independent (every row is one stream's), so lanes need no
    order between them; a stream's buckets are only ever recomputed by one lane at a time.

    Each lane costs its own statements (about ten, whatever its size), so a batch gets a further
    lane per `min_streams` streams only (the setting rollup_lane_streams): a fleet's batch of
    4,000 streams took 1.15-1.6 times less time in two lanes, one of 500 streams the same, one of
    20 dense streams a quarter more (`bench_rollup_fleet.py --lanes`). In the worker on the
    embedded stack, whose store shares the two cores, the whole pipeline gained nothing
    measurable (docs/hot-path.md): the worker runs one lane unless `rollup_lanes` says more."""

    def __init__(self, lanes: Sequence[RollupMaintainer], min_streams: int) -> None:
        if not lanes:
            raise ValueError("at least one lane")
        self.lanes = list(lanes)
        self.min_streams = min_streams
        self._pool = ThreadPoolExecutor(len(self.lanes), thread_name_prefix="rollup-lane") if len(lanes) > 1 else None
        self.last_seconds = 0.0

    @property
    def client(self) -> Client:
        return self.lanes[0].client

    @property
    def sink(self) -> RollupSink:
        return self.lanes[0].sink

    @property
    def kept_expired(self) -> int:
        return sum(m.kept_expired for m in self.lanes)

    def update(self, rows: RawColumns) -> int:
        """`RollupMaintainer.update`, in lanes."""
        return self.update_spans(spans_of(rows))

    def update_spans(self, spans: SpanColumns) -> int:
        """`RollupMaintainer.update_spans` of the spans, lane by lane at once; returns buckets
        written. Returns (or raises the first lane's error) only once every lane has finished: a
        retry of the batch must not recompute a stream a lane is still writing."""
        t0 = time.perf_counter()
        streams = len(set(zip(spans.node_id, spans.source_id, strict=True))) if self._pool is not None else 0
        k = max(1, min(len(self.lanes), streams // max(1, self.min_streams)))
        if self._pool is None or k == 1:
            written = self.lanes[0].update_spans(spans)
        else:
            parts = spans.lanes(k)
            futures = [self._pool.submit(m.update_spans, p) for m, p in zip(self.lanes, parts, strict=False) if len(p)]
            wait(futures)
            for f in futures:
                error = f.exception()
                if error is not None:
                    raise error
            written = sum(f.result() for f in futures)
        self.last_seconds = time.perf_counter() - t0
        return written

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


@dataclass
class _Plan:
    """One stream's refresh: its windows, its stale buckets per level, its fresh half hours."""

    node: int
    source: str
    z: ZoneInfo
    windows: list[tuple[int, int]] = field(default_factory=list)
    bounds: dict[Periodicity, dict[int, int]] = field(default_factory=lambda: {p: {} for p in PERIODICITIES})
    fresh: list[RollupRow] = field(default_factory=list)  # half hours (the store combines the rest)
    # half hours starting at or before this may have lost raw rows to expiry; None: none can
    horizon_ms: int | None = None
    kept_expired: int = 0

    def keep_expired(self, stored_halfhours: Sequence[RollupRow]) -> None:
        """Behind the retention horizon the raw rows of a half hour may be gone, so a recompute
        sees only what arrived within the grace period: a stored row is kept when the recompute
        finds fewer samples (or none: no tombstone). A backfill arriving in several batches
        still completes its buckets (its raw rows are all there, the count only grows)."""
        if self.horizon_ms is None:
            return
        fresh = {(r.property, r.ts_start_ms): r for r in self.fresh}
        for r in stored_halfhours:
            if not self.may_keep(r.ts_start_ms):
                continue
            mine = fresh.get((r.property, r.ts_start_ms))
            if mine is None or mine.count < r.count:
                fresh[(r.property, r.ts_start_ms)] = r
                self.kept_expired += 1
        self.fresh = list(fresh.values())

    def may_keep(self, start_ms: int) -> bool:
        """Whether a stored half hour starting here is one `keep_expired` weighs: stale, and at or
        before the retention horizon."""
        return self.horizon_ms is not None and start_ms <= self.horizon_ms and start_ms in self.bounds["halfhour"]

    def tombstoned(self, key: tuple[str, int], fresh: Container[tuple[str, int]]) -> bool:
        """Whether a stored half hour (property, start) gets a tombstone: stale, and no fresh row
        (of the keys `fresh`) replaces it."""
        return key[1] in self.bounds["halfhour"] and key not in fresh

    def fresh_keys(self) -> set[tuple[str, int]]:
        return {(r.property, r.ts_start_ms) for r in self.fresh}

    def fill(self, series: Iterator[list[Series]], resets: Iterator[list[ResetMarker]], tol: Tolerances) -> None:
        """Half hours from raw (the points and resets of each window, in order), and every stale bucket."""
        self.fresh = []
        for ws, we in self.windows:
            self.bounds["halfhour"].update(buckets_between(ws, we, "halfhour", self.z))
            self.fresh += recompute_series(
                next(series), next(resets), ws, we, "halfhour", self.z, tol, self.node, self.source
            )
        for per in PERIODICITIES[1:]:
            src = CASCADE_SOURCE[per]
            assert src is not None
            for s in self.bounds[src]:
                lo, hi = bucket_bounds(s, per, self.z)
                self.bounds[per][lo] = hi

    def ranges(self) -> list[tuple[str, int, int]]:
        """Stored rows to read: the stale half hours (each may need a tombstone, or be kept behind
        the retention horizon). The coarser levels never leave the store."""
        return [("halfhour", lo, hi) for lo, hi in _merge_ranges(self.bounds["halfhour"].items())]

    def children(self) -> list[tuple[str, int, int]]:
        """What the worker's cascade reads of this stream's stale coarser buckets (`cascade_reads`)."""
        return [
            r for per in PERIODICITIES[1:] for lo, hi in self.bounds[per].items() for r in cascade_reads(per, lo, hi)
        ]

    def halfhours(self, stored_halfhours: Sequence[RollupRow], out: Refresh) -> None:
        """Add to `out` this stream's fresh half hours, a tombstone for each stored stale one that
        none replaces, and its stale buckets of every coarser level."""
        stored_halfhours = [r for r in stored_halfhours if r.periodicity == "halfhour"]
        self.keep_expired(stored_halfhours)
        have = self.fresh_keys()
        out.rows += self.fresh
        out.tombstones += [
            RollupRow("halfhour", self.node, self.source, r.property, r.kind, r.ts_start_ms, r.ts_end_ms)
            for r in stored_halfhours
            if self.tombstoned((r.property, r.ts_start_ms), have)
        ]
        for per in PERIODICITIES[1:]:
            out.cascade[per] += [(self.node, self.source, lo, hi) for lo, hi in sorted(self.bounds[per].items())]


def recompute_range(
    client: Client,
    node: int,
    source: str,
    start_ms: int,
    end_ms: int,
    timezone_at: TimezoneAt,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
    chunk_days: int = 7,
    progress: Progress | None = None,
    pulse: frozenset[str] = frozenset(),
    cluster: str = "",
) -> int:
    """Recompute every level of one stream for the half hours overlapping [start_ms, end_ms)
    from raw, a few days at a time; returns rows written (tombstones included)."""
    maintainer = RollupMaintainer(client, timezone_at, tolerances, lambda: pulse, cluster)
    z = zone(timezone_at(node, start_ms))
    written = 0
    days = list(buckets_between(start_ms, end_ms, "day", z))
    for k in range(0, len(days), chunk_days):
        chunk = days[k : k + chunk_days]
        lo, hi = max(start_ms, chunk[0][0]), min(end_ms, chunk[-1][1])
        halfhours = [s for s, _ in buckets_between(lo, hi, "halfhour", z)]
        part = maintainer.refresh([(node, source, z.key, halfhours)])
        written += maintainer.sink.write(part.write())
        if progress is not None:
            progress.update(len(chunk))
            progress.set_postfix(rows=written)
    return written
