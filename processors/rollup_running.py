"""Running rollups of many series as columns: processors/rollup_incremental.py's state, one array
per figure and level, so a fleet's step (a reading in each of tens of thousands of series) is a
few array operations, not a Python object per series and row (issue 13).

A series (slot) holds, per level, the figures of processors/rollup_incremental.py: level 0 the
half hour of its last point, levels 1-5 (hour, day, week, month, year) the merged children of the
open bucket before its open child. The open child of a level is the open bucket of the level
below, so a step's rows are level 0's figures, then each level's prefix with the row below
added (`_merge`'s additions, in the same order: the same bits).

A step takes each series' new points. The common case, every new point in the half hour already
open (and for an accumulating series every pair inside it, so its clock share is the whole
increase), is done here for all series at once. The rest (a new half hour, a pair across an
edge, tags) goes through `SeriesState` one series at a time, the two sharing their figures.
tests/unit/test_rollup_running.py compares the table with `SeriesState` under Hypothesis.

A stream's series are taken out for a step and put back after its write (`take`, `put`): a step
that fails, or falls back to the store for a stream, keeps none of that stream's. Pure: no I/O.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
)
from processors.rollup_incremental import COARSER, Figures, NotAnAppend, SeriesState, seed

Stream = tuple[int, str]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
LEVELS = len(PERIODICITIES)
# each level's source level, by index (the half hours come from raw)
_SOURCE = [None, *(PERIODICITIES.index(CASCADE_SOURCE[p] or "halfhour") for p in COARSER)]
_KINDS: tuple[RollupKind, ...] = ("i", "a", "p", "s")
_CODE = {k: n for n, k in enumerate(_KINDS)}
_NAN = float("nan")


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


@dataclass
class RollupColumns:
    """Rollup rows as columns (the insert's order: sinks/rollups.py `rollup_columns_arrow`); a
    None figure is NaN in the float columns and listed in `absent` per column."""

    periodicity: list[str] = field(default_factory=list)
    node_id: list[I64] = field(default_factory=list)
    source_id: list[str] = field(default_factory=list)
    property: list[str] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    ts_start: list[I64] = field(default_factory=list)
    ts_end: list[I64] = field(default_factory=list)
    count: list[I64] = field(default_factory=list)
    # avg, min, max, diff, read_diff, read_start, read_end: values, and where they are None
    figures: list[tuple[list[F64], list[npt.NDArray[np.bool_]]]] = field(
        default_factory=lambda: [([], []) for _ in range(7)]
    )
    mode: list[str] = field(default_factory=list)
    status_counts: list[list[tuple[str, int]]] = field(default_factory=list)
    tags: list[list[str]] = field(default_factory=list)
    rows: list[RollupRow] = field(default_factory=list)  # rows of the one-at-a-time path

    def __len__(self) -> int:
        return len(self.periodicity) + len(self.rows)


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
        # what they did so far: series steps appended, series seeded, streams sent to the store
        self.appended = self.seeded = self.fell_back = 0

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
        self.tagged = grown(g(self, "tagged", None), (cap,), np.bool_, False)
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
            self._free.append(k)

    def count(self, appended: int = 0, seeded: int = 0, fell_back: int = 0) -> None:
        with self._lock:
            self.appended += appended
            self.seeded += seeded
            self.fell_back += fell_back

    # -- series in and out ----------------------------------------------------------------------

    def store(self, states: Mapping[str, SeriesState]) -> dict[str, int]:
        """New slots holding these states (one stream's), for `put`."""
        with self._lock:
            out: dict[str, int] = {}
            for prop, state in states.items():
                if not self._free:
                    self._grow(2 * self._cap)
                k = self._free.pop()
                self._write(k, state)
                out[prop] = k
            return out

    def _write(self, k: int, state: SeriesState) -> None:
        node, source, prop, kind = state.key
        self.node[k], self.source[k], self.prop[k], self.kind[k] = node, source, prop, _CODE[kind]
        self.zone[k], self.last_t[k], self.last_v[k] = state.z, state.last_t, state.last_v
        figures = [state.halfhour, *(state.levels[p].prefix for p in COARSER)]
        tagged = False
        for lv, f in enumerate(figures):
            self.lo[lv, k], self.hi[lv, k], self.n[lv, k], self.tot[lv, k] = f.lo, f.hi, f.count, f.total
            self.low[lv, k] = _NAN if f.low is None else f.low
            self.high[lv, k] = _NAN if f.high is None else f.high
            self.rdiff[lv, k] = f.read_diff
            self.rstart[lv, k] = _NAN if f.read_start is None else f.read_start
            self.rend[lv, k] = _NAN if f.read_end is None else f.read_end
            self.status[lv, k] = dict(f.status) if kind == "s" else None
            self.tags[lv, k] = f.tags
            tagged |= bool(f.tags)
        self.tagged[k] = tagged

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
                parts.append((n, slots.get(s.prop, -1), _CODE[s.kind], s))
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
        self, streams: Sequence[Stream], p: Points, tol: Tolerances = DEFAULT_TOLERANCES
    ) -> tuple[RollupColumns, set[Stream]]:
        """The new points of the streams' series, flat (`Points`, sorted by stream, slot, created),
        appended: the rows of every level they change, and the streams that fell back (a series
        not held or of another kind, a point at or before the one before it or a series' last, a
        NaN), whose slots the caller releases; their rows are not in the result. Points at or
        before a series' last that the caller read with the rest must be left out by the caller."""
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
            fell = {streams[n] for n in np.unique(p.stream[bad]).tolist()}
            starts = np.flatnonzero(first)
            ends = np.append(starts[1:], len(slot))
            group_slot = slot[starts]
            # the one-at-a-time path: a new half hour, a pair across its end, tags
            outside = self.tagged[np.where(group_slot >= 0, group_slot, 0)] | (
                p.created[ends - 1] >= self.hi[0, np.where(group_slot >= 0, group_slot, 0)]
            )
            if p.tags is not None:
                tagged = np.asarray([bool(g) for g in p.tags], np.bool_)
                outside |= np.logical_or.reduceat(tagged, starts)
            rows: dict[Stream, list[RollupRow]] = {}
            for g in np.flatnonzero(outside).tolist():
                stream = streams[int(p.stream[starts[g]])]
                if stream in fell:
                    continue
                a, b, k1 = int(starts[g]), int(ends[g]), int(group_slot[g])
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
                self._write(k1, state)
            for stream, mine in rows.items():
                if stream not in fell:
                    out.rows += mine
            # the rest, by columns: every point inside its series' open half hour
            fast = np.repeat(~outside, ends - starts)
            if fell:
                gone = np.asarray([streams[n] in fell for n in range(len(streams))], np.bool_)
                fast &= ~gone[p.stream]
            if fast.any():
                self._inside(p, fast, tol, out)
            return out, fell

    def _inside(self, p: Points, fast: npt.NDArray[np.bool_], tol: Tolerances, out: RollupColumns) -> None:
        """Points inside each series' open half hour, for all series at once: counted, added, and
        for an accumulating series its pair's whole increase (the pair lies inside the bucket)."""
        keep = fast & ~p.null
        slot, t, v, kind = p.slot[keep], p.created[keep], p.value[keep], p.kind[keep]
        status = keep & (p.kind == 3)
        texts = [x for x, k in zip(p.texts, status.tolist(), strict=True) if k] if status.any() else []
        slots = np.unique(p.slot[fast])
        first = np.ones(len(slot), np.bool_)
        first[1:] = slot[1:] != slot[:-1]
        starts = np.flatnonzero(first)
        rank = np.arange(len(slot)) - np.repeat(starts, np.diff(np.append(starts, len(slot))))
        for j in range(int(rank.max()) + 1 if len(rank) else 0):
            sel = rank == j
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
            for k1, x in zip(slot[kind == 3].tolist(), texts, strict=True):
                st = self.status[0, k1]
                st[x] = st.get(x, 0) + 1
        self._rows(slots, out)

    def _rows(self, slots: I64, out: RollupColumns) -> None:
        """The rows of every level of these slots: level 0's figures, each higher level its
        prefix with the row below added (`_absorb`, vectorized)."""
        kind = self.kind[slots]
        is_i, is_a, is_s = kind == 0, kind == 1, kind == 3
        is_ap = (kind == 1) | (kind == 2)
        n_rows = len(slots)
        node, source, prop = self.node[slots], self.source[slots], self.prop[slots]
        kinds = [_KINDS[c] for c in kind.tolist()]
        statuses = [
            dict(self.status[0, k]) if c == 3 else None for k, c in zip(slots.tolist(), kind.tolist(), strict=True)
        ]
        # the row of each level, as figures: count, total, low, high, read_diff, read_start, read_end
        rows: list[tuple[I64, I64, I64, F64, F64, F64, F64, F64, F64, list[dict[str, int] | None]]] = []
        rows.append(
            (
                self.lo[0, slots],
                self.hi[0, slots],
                self.n[0, slots],
                self.tot[0, slots],
                self.low[0, slots],
                self.high[0, slots],
                self.rdiff[0, slots],
                self.rstart[0, slots],
                self.rend[0, slots],
                statuses,
            )
        )
        for lv in range(1, LEVELS):
            src = _SOURCE[lv]
            assert src is not None
            _lo, _hi, cn, ctot, clow, chigh, crd, crs, cre, cst = rows[src]
            n = self.n[lv, slots] + cn
            ptot = self.tot[lv, slots]
            # `_merge` adds avg x count for i (a child with a count), `diff or 0.0` for a and p
            cavg = np.divide(ctot, cn, out=np.zeros(n_rows), where=cn > 0)
            add_i = np.where(cn > 0, cavg * cn, 0.0)
            add_ap = np.where(ctot == 0.0, 0.0, ctot)
            tot = np.where(is_i, np.where(cn > 0, ptot + add_i, ptot), np.where(is_ap, ptot + add_ap, ptot))
            plow, phigh = self.low[lv, slots], self.high[lv, slots]
            low = np.where(np.isnan(clow), plow, np.where(np.isnan(plow) | (clow < plow), clow, plow))
            high = np.where(np.isnan(chigh), phigh, np.where(np.isnan(phigh) | (chigh > phigh), chigh, phigh))
            rd = self.rdiff[lv, slots] + np.where(crd == 0.0, 0.0, crd)
            prs = self.rstart[lv, slots]
            rs = np.where(np.isnan(prs), crs, prs)
            re = np.where(np.isnan(cre), self.rend[lv, slots], cre)
            st: list[dict[str, int] | None] = []
            for k, child in zip(slots.tolist(), cst, strict=True):
                if child is None:
                    st.append(None)
                    continue
                merged = dict(self.status[lv, k] or {})
                for x, c in child.items():
                    merged[x] = merged.get(x, 0) + c
                st.append(merged)
            rows.append((self.lo[lv, slots], self.hi[lv, slots], n, tot, low, high, rd, rs, re, st))
        for lv, (lo, hi, n, tot, low, high, rd, rs, re, st) in enumerate(rows):
            out.periodicity += [PERIODICITIES[lv]] * n_rows
            out.node_id.append(node)
            out.source_id += source.tolist()
            out.property += prop.tolist()
            out.kind += kinds
            out.ts_start.append(lo)
            out.ts_end.append(hi)
            out.count.append(n)
            avg = np.divide(tot, n, out=np.zeros(n_rows), where=n > 0)
            for (values, absent), (fig, missing) in zip(
                out.figures,
                (
                    (avg, ~is_i | (n == 0)),
                    (low, ~is_i | np.isnan(low)),
                    (high, ~is_i | np.isnan(high)),
                    (tot, ~is_ap),
                    (rd, ~is_a),
                    (rs, ~is_a | np.isnan(rs)),
                    (re, ~is_a | np.isnan(re)),
                ),
                strict=True,
            ):
                values.append(np.where(missing, 0.0, fig))
                absent.append(missing)
            counts = [sorted(d.items()) if d is not None else [] for d in st]
            out.status_counts += counts
            out.mode += [(_mode(tuple(c)) or "") if s else "" for c, s in zip(counts, is_s.tolist(), strict=True)]
            out.tags += [[] for _ in range(n_rows)]


def _none(x: float) -> float | None:
    return None if x != x else float(x)


def as_rows(cols: RollupColumns) -> list[RollupRow]:
    """The rows of `cols` as RollupRows (for tests and the one-at-a-time path's readers)."""
    n = len(cols.periodicity)
    flat = [
        np.concatenate(c) if c else np.zeros(0, np.int64)
        for c in (cols.node_id, cols.ts_start, cols.ts_end, cols.count)
    ]
    figs = [
        (np.concatenate(v) if v else np.zeros(0), np.concatenate(a) if a else np.zeros(0, np.bool_))
        for v, a in cols.figures
    ]
    out = list(cols.rows)
    for i in range(n):
        avg, low, high, diff, rd, rs, re = (None if a[i] else float(v[i]) for v, a in figs)
        kind = cols.kind[i]
        sc = tuple(cols.status_counts[i])
        out.append(
            RollupRow(
                cols.periodicity[i],  # type: ignore[arg-type]
                int(flat[0][i]),
                cols.source_id[i],
                cols.property[i],
                kind,  # type: ignore[arg-type]
                int(flat[1][i]),
                int(flat[2][i]),
                int(flat[3][i]),
                avg,
                low,
                high,
                diff,
                rd,
                rs,
                re,
                mode=cols.mode[i] or None if kind == "s" else None,
                status_counts=sc,
                tags=tuple(cols.tags[i]),
            )
        )
    return out
