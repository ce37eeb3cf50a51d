"""Running rollups of many series as columns: processors/rollup_incremental.py's state, one array
per figure and level, so a fleet's step (a reading in each of tens of thousands of series) is a
few array operations, not a Python object per series and row (issue 13).

A series (slot) holds, per level, the figures of processors/rollup_incremental.py: level 0 the
half hour of its last point, levels 1-5 (hour, day, week, month, year) the merged children of the
open bucket before its open child. The open child of a level is the open bucket of the level
below, so a step's rows are level 0's figures, then each level's prefix with the row below
added (`_merge`'s additions, in the same order: the same bits).

A step takes each series' new points, the j-th point of every series together: one inside the
open half hour is counted and added (an accumulating series' pair lies inside it, so its clock
share is the whole increase); one in the next half hour closes the open one (its share of the
pair before the edge) and opens the next, and each coarser level whose open child moved takes
the old child into its prefix or opens a new bucket. A series whose points step over an empty
half hour with an accumulating pair that shares its increase with it goes through
`SeriesState` one series at a time, the two sharing their figures. tests/unit/test_rollup_running.py compares the table
with the reference under Hypothesis.

A stream's series are taken out for a step and put back after its write (`take`, `put`): a step
that fails, or falls back to the store for a stream, keeps none of that stream's. Pure: no I/O.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from processors.rollup import (
    CASCADE_SOURCE,
    DEFAULT_TOLERANCES,
    PERIODICITIES,
    RollupKind,
    RollupRow,
    Tolerances,
    _mode,
    bucket_bounds,
)
from processors.rollup_incremental import COARSER, Figures, NotAnAppend, SeriesState, seed

Stream = tuple[int, str]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
LEVELS = len(PERIODICITIES)
# each level's source level, by index (the half hours come from raw)
_SOURCE = [None, *(PERIODICITIES.index(CASCADE_SOURCE[p] or "halfhour") for p in COARSER)]
_KINDS: tuple[RollupKind, ...] = ("i", "a", "p", "s")
# a kind's code in the arrays (anything the store calls otherwise is instantaneous)
KIND_CODES: dict[str, int] = {k: n for n, k in enumerate(_KINDS)}
_NAN = float("nan")
# Most points of one series a step appends (the columns take a pass per point of the longest)
MAX_POINTS = 64


@dataclass(frozen=True)
class NewPoints:
    """One series' points of a step, ascending: created, value (NaN where null), null (kind s: no
    text), text (kind s), tags (None: none has any)."""

    prop: str
    kind: RollupKind
    created: I64
    value: F64
    null: npt.NDArray[np.bool_]
    texts: Sequence[str] | None = None
    tags: Sequence[Iterable[str]] | None = None


@dataclass(frozen=True)
class Points:
    """Many series' new points of a step, flat, sorted by stream, slot and created: the stream (an
    index into the step's streams), the series' slot (-1: not held), kind code (i a p s: 0-3),
    created, value (NaN where null), null (kind s: no text), text (kind s; '' elsewhere), tags
    (None: none has any)."""

    stream: I64
    slot: I64
    kind: npt.NDArray[np.int8]
    created: I64
    value: F64
    null: npt.NDArray[np.bool_]
    texts: Sequence[str]
    tags: Sequence[tuple[str, ...]] | None = None


@dataclass(frozen=True)
class Seed:
    """What `processors.rollup_incremental.seed` takes, checked by whoever made it: the series,
    its zone, its last point, and its figures at every level (the last point's half hour, then
    each coarser level's prefix, bounded by the last point's bucket)."""

    key: tuple[int, str, str, RollupKind]
    z: ZoneInfo
    last_t: int
    last_v: float
    figures: Sequence[Figures]

    @staticmethod
    def of(state: SeriesState) -> Seed:
        """A state's seed: its half hour and its coarser levels' prefixes (the open children
        follow from them)."""
        figures = [state.halfhour, *(state.levels[p].prefix for p in COARSER)]
        return Seed(state.key, state.z, state.last_t, state.last_v, figures)


@dataclass(frozen=True)
class FreshSeeds:
    """Series seeded at the start of a half hour X, as a stream with no running rollups is on its
    first step (`store_fresh`): nothing of X counted yet, the series' last reading before X
    (accumulating, within the look-back; else a time far before X and NaN: `NO_READING`), and
    per coarser level (hour … year) the figures of the open bucket holding X: its children
    before X's merged (the store's rows, as `read_prefixes` merges them). The caller then appends
    the series' points from X on; it must only do so where the buckets before X already have
    what the pair into the first of them gives them (`pair_reaches_back`)."""

    node: I64
    source: Sequence[str]
    prop: Sequence[str]
    kind: Sequence[RollupKind]
    zone: Sequence[ZoneInfo]
    x_lo: I64
    last_t: I64
    last_v: F64
    levels: Sequence[Figs]  # hour, day, week, month, year

    def __len__(self) -> int:
        return len(self.x_lo)


# a bucket's figures as `sinks.rollups.read_prefixes` gives them: count, total, min, max, reading
# difference, start and end readings, status counts, tags
PrefixFigures = tuple[
    int, float, float | None, float | None, float, float | None, float | None, dict[str, int], frozenset[str]
]


def level_figs(lo: I64, hi: I64, kinds: npt.NDArray[np.int8], found: Mapping[int, PrefixFigures]) -> Figs:
    """One coarser level's open buckets [lo, hi) of many series, the entries of `found` (by
    position) holding the children merged so far, the others empty."""
    f = _empty(len(lo), kinds)
    f.lo, f.hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
    for m, (n, tot, low, high, rd, rs, re, status, tags) in found.items():
        f.n[m], f.tot[m], f.rd[m] = n, tot, rd
        f.low[m] = _NAN if low is None else low
        f.high[m] = _NAN if high is None else high
        f.rs[m] = _NAN if rs is None else rs
        f.re[m] = _NAN if re is None else re
        if kinds[m] == 3:
            f.status[m] = dict(status)
        f.tags[m] = tags
    return f


# a fresh series' last reading when it has none (or it is beyond every tolerance): far enough
# before X that no pair reaches it
NO_READING = -(1 << 53)


def pair_reaches_back(before: int | None, first: int, x_lo: int, tol: Tolerances) -> bool:
    """Whether an accumulating pair from the reading `before` (< x_lo; None: none) to `first`
    (the first reading from x_lo on) gives anything to a bucket before X: a clock share, or the
    reading difference of a reading exactly at X's start."""
    if before is None:
        return False
    length = first - before
    return length <= tol.clock_ms or (first == x_lo and length <= tol.lookback_ms)


@dataclass(frozen=True)
class RowChunk:
    """Rows of one level for many series, as arrays: kind as codes (`KINDS`), a None figure NaN
    and listed in `absent`, status counts and modes by row (kind s rows only), tags as an index
    into `tag_sets`."""

    periodicity: str
    node_id: I64
    source_id: npt.NDArray[Any]
    property: npt.NDArray[Any]
    kind: npt.NDArray[np.int8]
    ts_start: I64
    ts_end: I64
    count: I64
    # avg, min, max, diff, read_diff, read_start, read_end
    figures: list[tuple[F64, npt.NDArray[np.bool_]]]
    status_counts: dict[int, list[tuple[str, int]]]
    mode: dict[int, str]
    tags: I64
    tag_sets: list[tuple[str, ...]]

    def __len__(self) -> int:
        return len(self.count)


@dataclass
class RollupColumns:
    """Rollup rows of a step: chunks of arrays (sinks/rollups.py `rollup_columns_arrow` inserts
    them), and the rows of the one-at-a-time path."""

    chunks: list[RowChunk] = field(default_factory=list)
    rows: list[RollupRow] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(len(c) for c in self.chunks) + len(self.rows)


KINDS = _KINDS


class RunningRollups:
    """The series states of the streams, shared by a worker's rollup lanes (a stream is in one
    lane at a time), up to `max_series`: the streams used longest ago go first. Emptied when the
    stale topic's partitions move (another worker may store the streams meanwhile) or the PULSE
    datastreams change (a property's kind with them); a put of a step that ran across that is
    dropped (`generation`)."""

    def __init__(self, max_series: int, capacity: int = 1024) -> None:
        self.max_series = max_series
        self.generation = 0
        self.pulse: frozenset[str] | None = None
        self._lock = threading.RLock()
        self._index: OrderedDict[Stream, dict[str, int]] = OrderedDict()
        self._series = 0
        self._cap = 0
        self._free: list[int] = []
        self._grow(capacity)
        # what they did so far: series steps appended, series seeded, streams sent to the store;
        # of the appended, those one series at a time (`SeriesState`)
        self.appended = self.seeded = self.fell_back = self.one_at_a_time = 0

    def _grow(self, cap: int) -> None:
        old = self._cap

        def grown(a: npt.NDArray[Any] | None, shape: tuple[int, ...], dtype: type, fill: object) -> npt.NDArray[Any]:
            out: npt.NDArray[Any] = np.full(shape, fill, dtype=dtype)
            if a is not None:
                out[..., :old] = a
            return out

        g = getattr
        self.node = grown(g(self, "node", None), (cap,), np.int64, 0)
        self.source = grown(g(self, "source", None), (cap,), object, "")
        self.prop = grown(g(self, "prop", None), (cap,), object, "")
        self.kind = grown(g(self, "kind", None), (cap,), np.int8, 0)
        self.zone = grown(g(self, "zone", None), (cap,), object, None)
        self.last_t = grown(g(self, "last_t", None), (cap,), np.int64, 0)
        self.last_v = grown(g(self, "last_v", None), (cap,), np.float64, 0.0)
        # seeded at the start of a half hour X (`store_fresh`): level 0 is a placeholder ending at
        # X, whose figures are the store's; the first point crossing into X opens it
        self.fresh = grown(g(self, "fresh", None), (cap,), np.bool_, False)
        self.lo = grown(g(self, "lo", None), (LEVELS, cap), np.int64, 0)
        self.hi = grown(g(self, "hi", None), (LEVELS, cap), np.int64, 0)
        self.n = grown(g(self, "n", None), (LEVELS, cap), np.int64, 0)
        self.tot = grown(g(self, "tot", None), (LEVELS, cap), np.float64, 0.0)
        self.low = grown(g(self, "low", None), (LEVELS, cap), np.float64, _NAN)
        self.high = grown(g(self, "high", None), (LEVELS, cap), np.float64, _NAN)
        self.rdiff = grown(g(self, "rdiff", None), (LEVELS, cap), np.float64, 0.0)
        self.rstart = grown(g(self, "rstart", None), (LEVELS, cap), np.float64, _NAN)
        self.rend = grown(g(self, "rend", None), (LEVELS, cap), np.float64, _NAN)
        self.status = grown(g(self, "status", None), (LEVELS, cap), object, None)
        self.tags = grown(g(self, "tags", None), (LEVELS, cap), object, frozenset())
        self._free += range(cap - 1, old - 1, -1)
        self._cap = cap

    def __len__(self) -> int:
        return self._series

    # -- whose they are -------------------------------------------------------------------------

    def clear(self) -> None:
        with self._lock:
            self._index.clear()
            self._series = 0
            self._free = list(range(self._cap - 1, -1, -1))
            self.generation += 1

    def use_pulse(self, pulse: frozenset[str]) -> None:
        if pulse != self.pulse:
            self.clear()
            self.pulse = pulse

    def take(self, streams: Iterable[Stream]) -> dict[Stream, dict[str, int]]:
        """The slots of these streams' series (property -> slot), out of the table until `put`
        or `release`."""
        with self._lock:
            out: dict[Stream, dict[str, int]] = {}
            for s in streams:
                slots = self._index.pop(s, None)
                if slots is not None:
                    self._series -= len(slots)
                    out[s] = slots
            return out

    def put(self, items: Mapping[Stream, dict[str, int]], generation: int) -> None:
        """Slots back in the table, after the step's write."""
        with self._lock:
            if generation != self.generation:
                return  # cleared meanwhile: every slot is free again
            for stream, slots in items.items():
                old = self._index.pop(stream, None)
                if old is not None:
                    self._release(old.values())
                    self._series -= len(old)
                self._index[stream] = slots
                self._series += len(slots)
            while self._index and self._series > self.max_series:
                _, old = self._index.popitem(last=False)
                self._series -= len(old)
                self._release(old.values())

    def release(self, items: Mapping[Stream, dict[str, int]], generation: int) -> None:
        """Slots taken and not kept (a stream sent to the store, a failed step)."""
        with self._lock:
            if generation == self.generation:
                for slots in items.values():
                    self._release(slots.values())

    def _release(self, slots: Iterable[int]) -> None:
        for k in slots:
            self.status[:, k] = None
            self.tags[:, k] = frozenset()
            self.fresh[k] = False
            self._free.append(k)

    def count(self, appended: int = 0, seeded: int = 0, fell_back: int = 0) -> None:
        with self._lock:
            self.appended += appended
            self.seeded += seeded
            self.fell_back += fell_back

    # -- series in and out ----------------------------------------------------------------------

    def store(self, states: Mapping[str, SeriesState]) -> dict[str, int]:
        """New slots holding these states (one stream's), for `put` (a stream's first step seeds
        by `store_fresh`)."""
        with self._lock:
            out: dict[str, int] = {}
            for prop, state in states.items():
                if not self._free:
                    self._grow(2 * self._cap)
                k = self._free.pop()
                self._write(k, Seed.of(state))
                out[prop] = k
            return out

    def _write(self, k: int, sd: Seed) -> None:
        node, source, prop, kind = sd.key
        self.node[k], self.source[k], self.prop[k], self.kind[k] = node, source, prop, KIND_CODES[kind]
        self.zone[k], self.last_t[k], self.last_v[k] = sd.z, sd.last_t, sd.last_v
        self.fresh[k] = False
        for lv, f in enumerate(sd.figures):
            self.lo[lv, k], self.hi[lv, k], self.n[lv, k], self.tot[lv, k] = f.lo, f.hi, f.count, f.total
            self.low[lv, k] = _NAN if f.low is None else f.low
            self.high[lv, k] = _NAN if f.high is None else f.high
            self.rdiff[lv, k] = f.read_diff
            self.rstart[lv, k] = _NAN if f.read_start is None else f.read_start
            self.rend[lv, k] = _NAN if f.read_end is None else f.read_end
            self.status[lv, k] = dict(f.status) if kind == "s" else None
            self.tags[lv, k] = f.tags

    def store_fresh(self, seeds: FreshSeeds) -> list[int]:
        """New slots holding series seeded at the start of a half hour X (one per entry of
        `seeds`, in order), for `put`: written as arrays, no object per series."""
        with self._lock:
            n = len(seeds.x_lo)
            while len(self._free) < n:
                self._grow(2 * self._cap)
            taken = [self._free.pop() for _ in range(n)]
            ks = np.asarray(taken, np.int64)
            kinds = np.asarray([KIND_CODES[k] for k in seeds.kind], np.int8)
            self.node[ks], self.kind[ks] = seeds.node, kinds
            self.source[ks] = np.asarray(seeds.source, object)
            self.prop[ks] = np.asarray(seeds.prop, object)
            zones = np.empty(n, object)
            zones[:] = seeds.zone
            self.zone[ks] = zones
            self.last_t[ks], self.last_v[ks], self.fresh[ks] = seeds.last_t, seeds.last_v, True
            placeholder = _empty(n, kinds)
            placeholder.lo, placeholder.hi = seeds.x_lo - 1, seeds.x_lo.copy()
            self._keep(0, ks, placeholder)
            for lv, figs in enumerate(seeds.levels, start=1):
                self._keep(lv, ks, figs)
            return taken

    def state(self, k: int, tol: Tolerances = DEFAULT_TOLERANCES) -> SeriesState:
        """Slot k as a `SeriesState` (for the one-at-a-time path)."""
        figures = [
            Figures(
                int(self.lo[lv, k]),
                int(self.hi[lv, k]),
                int(self.n[lv, k]),
                float(self.tot[lv, k]),
                _none(self.low[lv, k]),
                _none(self.high[lv, k]),
                float(self.rdiff[lv, k]),
                _none(self.rstart[lv, k]),
                _none(self.rend[lv, k]),
                dict(self.status[lv, k] or {}),
                self.tags[lv, k],
            )
            for lv in range(LEVELS)
        ]
        key = (int(self.node[k]), str(self.source[k]), str(self.prop[k]), _KINDS[int(self.kind[k])])
        last = (int(self.last_t[k]), float(self.last_v[k]))
        return seed(key, self.zone[k], last, figures[0], dict(zip(COARSER, figures[1:], strict=True)), tol)

    # -- a step ---------------------------------------------------------------------------------

    def append(
        self, steps: Mapping[Stream, tuple[dict[str, int], Sequence[NewPoints]]], tol: Tolerances = DEFAULT_TOLERANCES
    ) -> tuple[RollupColumns, set[Stream]]:
        """`append_points` of each stream's new points given per series (property -> slot)."""
        streams = list(steps)
        parts: list[tuple[int, int, int, NewPoints]] = []
        for n, stream in enumerate(streams):
            slots, series = steps[stream]
            for s in series:
                parts.append((n, slots.get(s.prop, -1), KIND_CODES[s.kind], s))
        if not parts:
            return RollupColumns(), set()
        sizes = [len(s.created) for *_, s in parts]
        flat = Points(
            np.repeat(np.asarray([n for n, *_ in parts], np.int64), sizes),
            np.repeat(np.asarray([k for _, k, *_ in parts], np.int64), sizes),
            np.repeat(np.asarray([c for _, _, c, _ in parts], np.int8), sizes),
            np.concatenate([s.created for *_, s in parts]),
            np.concatenate([s.value for *_, s in parts]),
            np.concatenate([s.null for *_, s in parts]),
            [x for *_, s in parts for x in (s.texts if s.texts is not None else [""] * len(s.created))],
            [tuple(g) for *_, s in parts for g in (s.tags if s.tags is not None else [()] * len(s.created))]
            if any(s.tags is not None for *_, s in parts)
            else None,
        )
        return self.append_points(streams, flat, tol)

    def append_points(
        self, streams: Sequence[Stream], p: Points, tol: Tolerances = DEFAULT_TOLERANCES, max_points: int = MAX_POINTS
    ) -> tuple[RollupColumns, set[Stream]]:
        """The new points of the streams' series, flat (`Points`, sorted by stream, slot, created),
        appended: the rows of every level they change, and the streams that fell back (a series
        not held or of another kind, a point at or before the one before it or a series' last, a
        NaN, more than `max_points` points), whose slots the caller releases; their rows are not
        in the result. Points at or before a series' last that the caller read with the rest
        must be left out by the caller."""
        out = RollupColumns()
        with self._lock:
            slot = p.slot
            held = slot >= 0
            k = np.where(held, slot, 0)
            bad = ~held | (self.kind[k] != p.kind)
            bad |= (p.kind != 3) & ~p.null & np.isnan(p.value)
            first = np.ones(len(slot), np.bool_)
            first[1:] = slot[1:] != slot[:-1]
            bad[1:] |= ~first[1:] & (p.created[1:] <= p.created[:-1])
            bad |= first & (p.created <= self.last_t[k])
            starts = np.flatnonzero(first)
            ends = np.append(starts[1:], len(slot))
            # a series with many points a step (a dense stream, or a backlog) costs a pass of the
            # columns per point: its stream goes to the store's recompute
            bad[starts[(ends - starts) > max_points]] = True
            fell = {streams[n] for n in np.unique(p.stream[bad]).tolist()}
            group_slot = slot[starts]
            # the one-at-a-time path: a step over an empty half hour (a gap)
            outside = p.created[ends - 1] >= self.hi[0, np.where(group_slot >= 0, group_slot, 0)]
            # by columns too: points that step from half hour to the next one at most (a fleet's
            # streams open the next half hour at once; a step behind holds a few of each stream)
            crossing = outside & (group_slot >= 0)
            counted = ~p.null
            for g in np.flatnonzero(crossing).tolist():
                k1 = int(group_slot[g])
                crossing[g] = _steps(
                    int(self.last_t[k1]),
                    int(self.hi[0, k1]),
                    p.created[starts[g] : ends[g]][counted[starts[g] : ends[g]]].tolist(),
                    self.zone[k1],
                    int(self.kind[k1]) == 1,
                    tol,
                )
            outside &= ~crossing
            rows: dict[Stream, list[RollupRow]] = {}
            self.one_at_a_time += int(outside.sum())
            for g in np.flatnonzero(outside).tolist():
                stream = streams[int(p.stream[starts[g]])]
                if stream in fell:
                    continue
                a, b, k1 = int(starts[g]), int(ends[g]), int(group_slot[g])
                if self.fresh[k1]:
                    fell.add(stream)  # its placeholder is not a half hour `SeriesState` can extend
                    continue
                try:
                    state = self.state(k1, tol)
                    rows.setdefault(stream, []).extend(
                        state.append(
                            p.created[a:b].tolist(),
                            [
                                None if n else v
                                for v, n in zip(p.value[a:b].tolist(), p.null[a:b].tolist(), strict=True)
                            ],
                            [None if n else x for x, n in zip(p.texts[a:b], p.null[a:b].tolist(), strict=True)],
                            p.tags[a:b] if p.tags is not None else None,
                        )
                    )
                except NotAnAppend:
                    fell.add(stream)
                    continue
                self._write(k1, Seed.of(state))
            for stream, mine in rows.items():
                if stream not in fell:
                    out.rows += mine
            # the rest, by columns: each point inside its series' open half hour, or opening the next
            fast = np.repeat(~outside, ends - starts)
            if fell:
                gone = np.asarray([streams[n] in fell for n in range(len(streams))], np.bool_)
                fast &= ~gone[p.stream]
            if fast.any():
                self._columns(p, fast, tol, out)
            return out, fell

    def _columns(self, p: Points, fast: npt.NDArray[np.bool_], tol: Tolerances, out: RollupColumns) -> None:
        """Points of many series at once, the j-th of every series together: one inside its
        series' open half hour is counted and added (an accumulating series' pair, inside the
        bucket, adds its whole increase); one in the next half hour closes the open one and opens
        it (`_cross`). The rows of the buckets closed on the way, then of every open one."""
        keep = fast & ~p.null
        slot, t, v, kind = p.slot[keep], p.created[keep], p.value[keep], p.kind[keep]
        status = keep & (p.kind == 3)
        texts = [x for x, k in zip(p.texts, status.tolist(), strict=True) if k] if status.any() else []
        slots = np.unique(p.slot[fast])
        first = np.ones(len(slot), np.bool_)
        first[1:] = slot[1:] != slot[:-1]
        starts = np.flatnonzero(first)
        rank = np.arange(len(slot)) - np.repeat(starts, np.diff(np.append(starts, len(slot))))
        is_status = kind == 3
        none: frozenset[str] = frozenset()
        tags = [frozenset(g) for g, k in zip(p.tags, keep.tolist(), strict=True) if k] if p.tags is not None else None
        for j in range(int(rank.max()) + 1 if len(rank) else 0):
            sel = rank == j
            across = sel & (t >= self.hi[0, slot])
            if across.any():
                picked = [x for x, m in zip(texts, across[is_status].tolist(), strict=True) if m] if texts else []
                at = np.flatnonzero(across).tolist()
                opened = [tags[m] for m in at] if tags is not None else [none] * len(at)
                self._cross(slot[across], t[across], v[across], picked, opened, tol, out)
                sel &= ~across
            if tags is not None:
                for m in np.flatnonzero(sel).tolist():
                    g, k1 = tags[m], int(slot[m])
                    if g and not g <= self.tags[0, k1]:
                        self.tags[0, k1] = self.tags[0, k1] | g
            k, tj, vj, kj = slot[sel], t[sel], v[sel], kind[sel]
            self.n[0, k] += 1
            inst = kj == 0
            ki, vi = k[inst], vj[inst]
            lo, hi = self.low[0, ki], self.high[0, ki]
            self.low[0, ki] = np.where(np.isnan(lo) | (vi < lo), vi, lo)
            self.high[0, ki] = np.where(np.isnan(hi) | (vi > hi), vi, hi)
            summed = inst | (kj == 2)
            self.tot[0, k[summed]] += vj[summed]
            acc = kj == 1
            if acc.any():
                ka, ta, va = k[acc], tj[acc], vj[acc]
                length = ta - self.last_t[ka]
                inc = va - self.last_v[ka]
                lf = length.astype(np.float64)
                clock = length <= tol.clock_ms
                # `_accumulating`: the pair's share of the bucket, inc * overlap / length
                self.tot[0, ka[clock]] += inc[clock] * lf[clock] / lf[clock]
                chained = length <= tol.lookback_ms
                self.rdiff[0, ka[chained]] += inc[chained]
                self.rend[0, ka] = va
            self.last_t[k] = tj
            num = kj != 3
            self.last_v[k[num]] = vj[num]
            if texts:
                for k1, x, m in zip(slot[is_status].tolist(), texts, sel[is_status].tolist(), strict=True):
                    if m:
                        st = self.status[0, k1]
                        st[x] = st.get(x, 0) + 1
        # a series seeded fresh with no counted point yet has no row of its own
        self._rows(slots[~self.fresh[slots]], out)

    # -- rows: a level's figures for many slots at once -----------------------------------------

    def _level(self, lv: int, slots: I64) -> Figs:
        """The stored figures of level lv (0: the open half hour; else the open bucket's prefix)."""
        status = self.status[lv, slots].tolist()
        for m in np.flatnonzero(self.kind[slots] == 3).tolist():  # only status rows have counts
            if status[m] is not None:
                status[m] = dict(status[m])
        return Figs(
            self.lo[lv, slots],
            self.hi[lv, slots],
            self.n[lv, slots],
            self.tot[lv, slots],
            self.low[lv, slots],
            self.high[lv, slots],
            self.rdiff[lv, slots],
            self.rstart[lv, slots],
            self.rend[lv, slots],
            status,
            self.tags[lv, slots].tolist(),
        )

    def _keep(self, lv: int, slots: I64, f: Figs) -> None:
        self.lo[lv, slots], self.hi[lv, slots], self.n[lv, slots], self.tot[lv, slots] = f.lo, f.hi, f.n, f.tot
        self.low[lv, slots], self.high[lv, slots], self.rdiff[lv, slots] = f.low, f.high, f.rd
        self.rstart[lv, slots], self.rend[lv, slots] = f.rs, f.re
        for k, d, g in zip(slots.tolist(), f.status, f.tags, strict=True):
            self.status[lv, k] = d
            self.tags[lv, k] = g

    def _levels(self, slots: I64, half: Figs) -> list[Figs]:
        """The row of every level from the half hour's: each level's prefix with the row below."""
        kind = self.kind[slots]
        rows = [half]
        for lv in range(1, LEVELS):
            src = _SOURCE[lv]
            assert src is not None
            rows.append(_merged(self._level(lv, slots), rows[src], kind))
        return rows

    def _rows(self, slots: I64, out: RollupColumns) -> None:
        """The rows of every level of these slots: level 0's figures, each higher level its
        prefix with the row below added (`_absorb`, vectorized)."""
        for lv, f in enumerate(self._levels(slots, self._level(0, slots))):
            self._emit(lv, slots, f, out)

    def _cross(
        self,
        slots: I64,
        t: I64,
        v: F64,
        texts: Sequence[str],
        tags: Sequence[frozenset[str]],
        tol: Tolerances,
        out: RollupColumns,
    ) -> None:
        """One point per slot, in a half hour after its open one (`_steps`; for an accumulating
        series the pair from its last reading across that edge): the old half hour closes (its
        share of the pair added), the new one opens, and each coarser level whose open child
        moved takes the old child into its prefix, or opens a new bucket."""
        kind = self.kind[slots]
        acc = kind == 1
        edge = self.hi[0, slots]
        length = t - self.last_t[slots]
        inc = v - self.last_v[slots]
        lf = length.astype(np.float64)
        clock = acc & (length <= tol.clock_ms)
        chained = acc & (length <= tol.lookback_ms)
        at_edge = t == edge
        # a fresh series' placeholder (before X): what the pair gives the buckets before X is the
        # store's, so it stays empty, is not written, and adds nothing where it is merged
        seeded_fresh = self.fresh[slots]
        # the old half hour: the pair's share before the edge; a reading exactly at the edge is
        # its end reading and its reading difference ((start, end] holds it)
        old = self._level(0, slots)
        share = inc * (edge - self.last_t[slots]).astype(np.float64) / lf
        old.tot = np.where(clock & ~seeded_fresh, old.tot + share, old.tot)
        ends = chained & at_edge & ~seeded_fresh
        old.rd = np.where(ends, old.rd + inc, old.rd)
        old.re = np.where(ends, v, old.re)
        self._keep(0, slots, old)
        before = self._levels(slots, old)
        # the new half hour (the next, or further: `_steps`)
        z = self.zone[slots]
        bounds = [bucket_bounds(int(a), "halfhour", zz) for a, zz in zip(t.tolist(), z.tolist(), strict=True)]
        lo = np.asarray([a for a, _ in bounds], np.int64)
        hi = np.asarray([b for _, b in bounds], np.int64)
        n = len(slots)
        after_share = inc * (t - edge).astype(np.float64) / lf
        piece = clock & ~at_edge
        tot = np.where(piece, 0.0 + after_share, 0.0)
        tot = np.where((kind == 0) | (kind == 2), 0.0 + v, tot)
        rd = np.where(chained & ~at_edge, 0.0 + inc, 0.0)
        vn = self.last_v[slots]
        rs = np.where(acc, np.where(at_edge, v, np.where(chained, vn, v)), _NAN)
        inst = kind == 0
        status: list[dict[str, int] | None] = [None] * n
        for m, x in zip(np.flatnonzero(kind == 3).tolist(), texts, strict=True):
            status[m] = {x: 1}
        half = Figs(
            lo,
            hi,
            np.ones(n, np.int64),
            tot,
            np.where(inst, v, _NAN),
            np.where(inst, v, _NAN),
            rd,
            rs,
            np.where(acc, v, _NAN),
            status,
            list(tags),
        )
        self._keep(0, slots, half)
        self.last_t[slots] = t
        num = kind != 3
        self.last_v[slots[num]] = v[num]
        self.fresh[slots] = False
        # closed; the open rows come once the step is done
        self._emit(0, slots[~seeded_fresh], before[0].take(~seeded_fresh), out)
        rows = [half]
        for lv in range(1, LEVELS):
            src = _SOURCE[lv]
            assert src is not None
            prefix = self._level(lv, slots)
            closed = rows[src].lo >= prefix.hi
            moved = ~closed & (rows[src].lo > before[src].lo)
            if moved.any():
                prefix = _chosen(moved, _merged(prefix, before[src], kind), prefix)
            if closed.any():
                per = PERIODICITIES[lv]
                opened = [
                    bucket_bounds(int(a), per, zz)
                    for a, zz in zip(rows[src].lo[closed].tolist(), z[closed].tolist(), strict=True)
                ]
                fresh = _empty(len(opened), kind[closed])
                fresh.lo = np.asarray([a for a, _ in opened], np.int64)
                fresh.hi = np.asarray([b for _, b in opened], np.int64)
                prefix = _chosen(closed, _placed(fresh, closed, prefix), prefix)
                # a fresh series' bucket holding X closes with only the store's children in it
                shut = closed & ~seeded_fresh
                self._emit(lv, slots[shut], before[lv].take(shut), out)
            self._keep(lv, slots, prefix)
            rows.append(_merged(prefix, rows[src], kind))

    def _emit(self, lv: int, slots: I64, f: Figs, out: RollupColumns) -> None:
        n_rows = len(slots)
        if not n_rows:
            return
        kind = self.kind[slots]
        is_i, is_a, is_s = kind == 0, kind == 1, kind == 3
        is_ap = (kind == 1) | (kind == 2)
        avg = np.divide(f.tot, f.n, out=np.zeros(n_rows), where=f.n > 0)
        figures = [
            (np.where(missing, 0.0, fig), missing)
            for fig, missing in (
                (avg, ~is_i | (f.n == 0)),
                (f.low, ~is_i | np.isnan(f.low)),
                (f.high, ~is_i | np.isnan(f.high)),
                (f.tot, ~is_ap),
                (f.rd, ~is_a),
                (f.rs, ~is_a | np.isnan(f.rs)),
                (f.re, ~is_a | np.isnan(f.re)),
            )
        ]
        counts: dict[int, list[tuple[str, int]]] = {}
        for m in np.flatnonzero(is_s).tolist():
            d = f.status[m]
            counts[m] = sorted(d.items()) if d else []
        # a fleet's rows mostly share one tag set: the distinct ones and each row's index without a
        # Python frame per row
        sets = list(dict.fromkeys(f.tags))
        if len(sets) == 1:
            tags = np.zeros(n_rows, np.int64)
        else:
            index = {g: i for i, g in enumerate(sets)}
            tags = np.fromiter(map(index.__getitem__, f.tags), np.int64, n_rows)
        out.chunks.append(
            RowChunk(
                PERIODICITIES[lv],
                self.node[slots],
                self.source[slots],
                self.prop[slots],
                kind,
                f.lo,
                f.hi,
                f.n,
                figures,
                counts,
                {m: _mode(tuple(c)) or "" for m, c in counts.items()},
                tags,
                [tuple(sorted(g)) for g in sets],
            )
        )


@dataclass
class Figs:
    """One level's figures of many slots (`Figures` as arrays; NaN for None)."""

    lo: I64
    hi: I64
    n: I64
    tot: F64
    low: F64
    high: F64
    rd: F64
    rs: F64
    re: F64
    status: list[dict[str, int] | None]
    tags: list[frozenset[str]]

    def take(self, mask: npt.NDArray[np.bool_]) -> Figs:
        picked = np.flatnonzero(mask).tolist()
        return Figs(
            self.lo[mask],
            self.hi[mask],
            self.n[mask],
            self.tot[mask],
            self.low[mask],
            self.high[mask],
            self.rd[mask],
            self.rs[mask],
            self.re[mask],
            [self.status[m] for m in picked],
            [self.tags[m] for m in picked],
        )


def _merged(p: Figs, c: Figs, kind: npt.NDArray[np.int8]) -> Figs:
    """Prefix p with child row c added, as `_absorb` adds a child (bounds p's)."""
    is_i, is_ap = kind == 0, (kind == 1) | (kind == 2)
    # `_merge` adds avg x count for i (a child with a count), `diff or 0.0` for a and p
    cavg = np.divide(c.tot, c.n, out=np.zeros(len(c.n)), where=c.n > 0)
    add_i = np.where(c.n > 0, cavg * c.n, 0.0)
    add_ap = np.where(c.tot == 0.0, 0.0, c.tot)
    tot = np.where(is_i, np.where(c.n > 0, p.tot + add_i, p.tot), np.where(is_ap, p.tot + add_ap, p.tot))
    low = np.where(np.isnan(c.low), p.low, np.where(np.isnan(p.low) | (c.low < p.low), c.low, p.low))
    high = np.where(np.isnan(c.high), p.high, np.where(np.isnan(p.high) | (c.high > p.high), c.high, p.high))
    rd = p.rd + np.where(c.rd == 0.0, 0.0, c.rd)
    rs = np.where(np.isnan(p.rs), c.rs, p.rs)
    re = np.where(np.isnan(c.re), p.re, c.re)
    status = list(p.status)
    for k in np.flatnonzero(kind == 3).tolist():  # only status rows have counts
        child = c.status[k]
        if child is not None:
            merged = dict(status[k] or {})
            for x, m in child.items():
                merged[x] = merged.get(x, 0) + m
            status[k] = merged
    tags = [a if b <= a else a | b for a, b in zip(p.tags, c.tags, strict=True)]
    return Figs(p.lo, p.hi, p.n + c.n, tot, low, high, rd, rs, re, status, tags)


def _chosen(mask: npt.NDArray[np.bool_], a: Figs, b: Figs) -> Figs:
    """a where mask, else b."""
    pick = mask.tolist()
    return Figs(
        np.where(mask, a.lo, b.lo),
        np.where(mask, a.hi, b.hi),
        np.where(mask, a.n, b.n),
        np.where(mask, a.tot, b.tot),
        np.where(mask, a.low, b.low),
        np.where(mask, a.high, b.high),
        np.where(mask, a.rd, b.rd),
        np.where(mask, a.rs, b.rs),
        np.where(mask, a.re, b.re),
        [x if m else y for x, y, m in zip(a.status, b.status, pick, strict=True)],
        [x if m else y for x, y, m in zip(a.tags, b.tags, pick, strict=True)],
    )


def _empty(n: int, kind: npt.NDArray[np.int8]) -> Figs:
    return Figs(
        np.zeros(n, np.int64),
        np.zeros(n, np.int64),
        np.zeros(n, np.int64),
        np.zeros(n),
        np.full(n, _NAN),
        np.full(n, _NAN),
        np.zeros(n),
        np.full(n, _NAN),
        np.full(n, _NAN),
        [{} if k == 3 else None for k in kind.tolist()],
        [frozenset()] * n,
    )


def _placed(part: Figs, mask: npt.NDArray[np.bool_], like: Figs) -> Figs:
    """`part` (one entry per True of mask) spread over mask's length, `like` elsewhere."""
    out = Figs(
        like.lo.copy(),
        like.hi.copy(),
        like.n.copy(),
        like.tot.copy(),
        like.low.copy(),
        like.high.copy(),
        like.rd.copy(),
        like.rs.copy(),
        like.re.copy(),
        list(like.status),
        list(like.tags),
    )
    for name in ("lo", "hi", "n", "tot", "low", "high", "rd", "rs", "re"):
        getattr(out, name)[mask] = getattr(part, name)
    for m, d, g in zip(np.flatnonzero(mask).tolist(), part.status, part.tags, strict=True):
        out.status[m] = d
        out.tags[m] = g
    return out


def _steps(last: int, hi: int, times: Sequence[int], z: ZoneInfo, accumulating: bool, tol: Tolerances) -> bool:
    """Whether `_cross` covers each of the times (ascending) that leaves the open half hour (ending
    at hi): into the next half hour, or further for anything but an accumulating series, whose
    pair then must share nothing by clock with the half hours stepped over, nor give the one
    before its bucket its reading difference."""
    for t in times:
        if t >= hi:
            nxt = bucket_bounds(hi, "halfhour", z)[1]
            lo, hi = bucket_bounds(t, "halfhour", z)
            if accumulating and t >= nxt:
                length = t - last
                if length <= tol.clock_ms or (t == lo and length <= tol.lookback_ms):
                    return False
        last = t
    return True


def _none(x: float) -> float | None:
    return None if x != x else float(x)


def as_rows(cols: RollupColumns) -> list[RollupRow]:
    """The rows of `cols` as RollupRows (for tests)."""
    out = list(cols.rows)
    for c in cols.chunks:
        for i in range(len(c)):
            avg, low, high, diff, rd, rs, re = (None if a[i] else float(v[i]) for v, a in c.figures)
            kind = _KINDS[int(c.kind[i])]
            out.append(
                RollupRow(
                    c.periodicity,  # type: ignore[arg-type]
                    int(c.node_id[i]),
                    str(c.source_id[i]),
                    str(c.property[i]),
                    kind,
                    int(c.ts_start[i]),
                    int(c.ts_end[i]),
                    int(c.count[i]),
                    avg,
                    low,
                    high,
                    diff,
                    rd,
                    rs,
                    re,
                    mode=(c.mode.get(i) or None) if kind == "s" else None,
                    status_counts=tuple(c.status_counts.get(i, ())),
                    tags=c.tag_sets[int(c.tags[i])],
                )
            )
    return out
