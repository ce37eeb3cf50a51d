"""The recent raw points of the streams a rollup agent maintains, held between its steps, so a
step reads from the store only what its stale marks say changed (issue 13).

Without it every step read each stale half hour whole from `datum_raw FINAL`, and each
changed reading's neighbours: a dense stream's current half hour was read again at every step
(about 2.4 times the rows ingested, and most of the store's time in a dense run).

What is held, per stream: every stored point of an interval [lo, hi) of its `created` times
(hi OPEN: to the stream's end), as the store's `FINAL` read gives them, sorted by (property,
kind, created). It stays equal to the store because every write of a stream's raw rows is
followed by stale marks naming what it changed (property, kind, first and last created), and
every mark of a stream comes to the one rollup agent that holds it: the agent re-reads each
marked span and splices it in (`spliced`) before it uses the points. What can break that is
dealt with by the caller (pipeline/worker/rollups.py): a rebalance of the stale topic, or a
step that fails, empties the cache (`clear`); a change of the PULSE datastreams does too (the
kinds held are the ones the rollups read).

The reads served from here are the ones `sinks.rollups` makes, answered the same way: a
window's points and edge readings (`window_rows`, for `series_of`), and a changed reading's
nearest readings (`nearest_readings`). The store still answers what reaches outside [lo, hi).

Pure: Arrow and numpy, no I/O.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

# `hi` of points held to the stream's end: 2200-01-01T00:00Z, inside DateTime64(3)'s range.
OPEN = 7_258_118_400_000

# How long a stream found sparse is read whole before it is tried again.
SPARSE_FOR_S = 60.0

# The points as held: a `sinks.rollups` points read without its window number q.
POINT_SCHEMA = pa.schema(
    [
        ("t", pa.int64()),
        ("p", pa.string()),
        ("k", pa.string()),
        ("v", pa.float64()),
        ("x", pa.string()),
        ("g", pa.list_(pa.string())),
    ]
)

Stream = tuple[int, str]
I64 = npt.NDArray[np.int64]


def _points(table: pa.Table) -> pa.Table:
    """A points read (any column order, q or not) as POINT_SCHEMA rows, in the read's order."""
    return table.select(POINT_SCHEMA.names).cast(POINT_SCHEMA)


@dataclass(frozen=True, eq=False)
class Group:
    """The held points of one (property, kind), sorted by created: their rows, created times and
    which have a value."""

    rows: pa.Table
    t: I64
    valid: npt.NDArray[np.bool_]

    @staticmethod
    def of(rows: pa.Table) -> Group:
        if rows.column("t").num_chunks > 16:  # spliced step after step: one buffer again
            rows = rows.combine_chunks()
        t = rows.column("t").to_numpy().astype(np.int64, copy=False)
        return Group(rows, t, rows.column("v").is_valid().to_numpy(zero_copy_only=False))

    def __len__(self) -> int:
        return len(self.t)

    def between(self, lo: int, hi: int) -> tuple[int, int]:
        """Its rows with created in [lo, hi)."""
        return int(np.searchsorted(self.t, lo, "left")), int(np.searchsorted(self.t, hi, "left"))

    def slice(self, i: int, j: int) -> Group:
        return Group(self.rows.slice(i, j - i), self.t[i:j], self.valid[i:j])


def _groups(table: pa.Table) -> dict[tuple[str, str], Group]:
    """The store's points read of one stream cut into groups: rows sorted by (p, k, t) within each
    read range (`sinks.rollups.read_points`), so one group's rows are one run per range; runs of a
    group are joined, sorted by created where a later run does not start after the one before."""
    runs: dict[tuple[str, str], list[pa.Table]] = {}
    if table.num_rows:
        p, k = (pc.dictionary_encode(table.column(c).combine_chunks()) for c in ("p", "k"))
        pi, ki = (c.indices.to_numpy(zero_copy_only=False) for c in (p, k))
        props, kinds = p.dictionary.to_pylist(), k.dictionary.to_pylist()
        cut = (np.flatnonzero((pi[1:] != pi[:-1]) | (ki[1:] != ki[:-1])) + 1).tolist()
        for a, b in zip([0, *cut], [*cut, table.num_rows], strict=True):
            runs.setdefault((props[pi[a]], kinds[ki[a]]), []).append(table.slice(a, b - a))
    return {key: _joined([Group.of(r) for r in parts]) for key, parts in runs.items()}


def _joined(groups: Sequence[Group]) -> Group:
    """One group from runs of its rows, each sorted by created."""
    if len(groups) == 1:
        return groups[0]
    rows = pa.concat_tables([g.rows for g in groups])
    if all(b.t[0] > a.t[-1] for a, b in zip(groups, groups[1:], strict=False)):  # one after another
        return Group.of(rows)
    return Group.of(rows.take(pa.array(np.argsort(np.concatenate([g.t for g in groups]), kind="stable"))))


@dataclass(frozen=True, eq=False)
class Held:
    """Every stored point of one stream with created in [lo, hi), per (property, kind)."""

    lo: int
    hi: int
    groups: dict[tuple[str, str], Group]

    @staticmethod
    def read(lo: int, hi: int, table: pa.Table) -> Held:
        """Held points from the store's read of [lo, hi) (`sinks.rollups.read_points`: sorted by
        property, kind and created)."""
        return Held(lo, hi, _groups(_points(table)))

    def __len__(self) -> int:
        return sum(len(g) for g in self.groups.values())

    def covers(self, lo: int, hi: int) -> bool:
        """Whether every stored point with created in [lo, hi) is held."""
        return self.lo <= lo and hi <= self.hi

    def newest(self) -> int | None:
        return max((int(g.t[-1]) for g in self.groups.values() if len(g)), default=None)

    def span(self) -> int:
        """From its oldest point to its newest (0 with fewer than two)."""
        oldest = min((int(g.t[0]) for g in self.groups.values() if len(g)), default=None)
        newest = self.newest()
        return 0 if oldest is None or newest is None else newest - oldest


def spliced(held: Held, spans: Iterable[tuple[str, int, int]], fresh: pa.Table) -> Held:
    """`held` with the points of each (property, lo, hi) span replaced by `fresh` (the store's
    points of those spans, any kind: one row per property and instant, whatever its kind)."""
    by_prop: dict[str, list[tuple[int, int]]] = {}
    for prop, lo, hi in spans:
        by_prop.setdefault(prop, []).append((max(lo, held.lo), min(hi, held.hi)))
    groups = dict(held.groups)
    for (prop, kind), g in held.groups.items():
        ranges = by_prop.get(prop)
        if not ranges:
            continue
        keep = np.ones(len(g), np.bool_)
        for lo, hi in ranges:
            i, j = g.between(lo, hi)
            keep[i:j] = False
        if not keep.all():
            groups[(prop, kind)] = Group.of(g.rows.filter(pa.array(keep)))
    if fresh.num_rows:
        t = fresh.column("t").to_numpy()
        for key, new in _groups(_points(fresh.filter(pa.array((t >= held.lo) & (t < held.hi))))).items():
            old = groups.get(key)
            groups[key] = new if old is None or not len(old) else _joined([old, new])
    return Held(held.lo, held.hi, {k: g for k, g in groups.items() if len(g)})


def trimmed(held: Held, lo: int) -> Held:
    """`held` without the points before `lo`."""
    if lo <= held.lo:
        return held
    groups = {k: g.slice(g.between(lo, lo)[0], len(g)) for k, g in held.groups.items()}
    return Held(lo, max(lo, held.hi), {k: g for k, g in groups.items() if len(g)})


def nearest_readings(
    held: Held, prop: str, at_ms: int, clock_ms: int, lookback_ms: int, before: bool, after: bool
) -> tuple[int | None, int | None]:
    """The property's nearest accumulating reading with a value strictly before `at_ms` (no
    further than the clock tolerance) and strictly after it (no further than the look-back), as
    `sinks.rollups.read_neighbours` finds it among readings; None where there is none (or not
    asked). The caller checks that [at - clock, at + look-back] is held."""
    g = held.groups.get((prop, "a"))
    if g is None:
        return None, None
    t = g.t[g.valid]
    prev = nxt = None
    if before:
        i = int(np.searchsorted(t, at_ms, "left"))
        if i > 0 and t[i - 1] >= at_ms - clock_ms:
            prev = int(t[i - 1])
    if after:
        i = int(np.searchsorted(t, at_ms, "right"))
        if i < len(t) and t[i] <= at_ms + lookback_ms:
            nxt = int(t[i])
    return prev, nxt


def window_rows(held: Held, q: int, start_ms: int, end_ms: int, near_ms: int) -> pa.Table:
    """What `sinks.rollups` reads of a window [start, end) of the stream, tagged q and sorted as
    it sorts (property, kind, created): every point in it, and per property the latest
    accumulating reading with a value in [start - near, start) and the first in [end, end +
    near) (kind 'a', no text). The caller checks that [start - near, end + near) is held."""
    parts: list[pa.Table] = []
    for key in sorted(held.groups):
        g = held.groups[key]
        i, j = g.between(start_ms, end_ms)
        if key[1] != "a":
            if j > i:
                parts.append(g.rows.slice(i, j - i))
            continue
        lo, _ = g.between(start_ms - near_ms, start_ms)
        hi, _ = g.between(end_ms + near_ms, end_ms + near_ms)
        before = np.flatnonzero(g.valid[lo:i])
        after = np.flatnonzero(g.valid[j:hi])
        if len(before):
            parts.append(_edge(g.rows.slice(lo + int(before[-1]), 1)))
        if j > i:
            parts.append(g.rows.slice(i, j - i))
        if len(after):
            parts.append(_edge(g.rows.slice(j + int(after[0]), 1)))
    out = pa.concat_tables(parts) if parts else POINT_SCHEMA.empty_table()
    return out.add_column(0, "q", pa.array(np.full(out.num_rows, q, np.uint32)))


def _edge(row: pa.Table) -> pa.Table:
    """An edge reading as the store's edge read gives it: no text."""
    return row.set_column(row.schema.get_field_index("x"), "x", pa.array([""], pa.string()))


class PointCache:
    """Held points of the streams, shared by a worker's rollup lanes (a stream is in one lane at a
    time), within a budget of points: the streams used longest ago go first.

    A step takes what it needs at its start (`take`) and works on its own references; what it
    puts back is dropped if the cache was emptied meanwhile (a rebalance while the step ran:
    `generation`)."""

    def __init__(self, max_points: int, max_streams: int = 2_000, min_points: int = 1_000) -> None:
        self.max_points = max_points
        self.max_streams = max_streams
        # A stream with fewer points over half an hour is not held: a fleet's stream has a few
        # points a window, which cost the store less to read again than the worker to splice in
        # (a dense one has thousands).
        self.min_points = min_points
        self.generation = 0
        self.pulse: frozenset[str] | None = None
        self._held: OrderedDict[Stream, Held] = OrderedDict()
        self._points = 0
        self._lock = threading.Lock()
        # what it saved and cost so far: windows answered, streams read in, spans re-read
        self.served = self.filled = self.respliced = 0
        # streams found too sparse to be worth holding, and when: their windows are read as always
        # for a while (a new stream's first points are few, however dense it turns out)
        self.sparse: dict[Stream, float] = {}

    @property
    def points(self) -> int:
        return self._points

    def __len__(self) -> int:
        return len(self._held)

    def clear(self) -> None:
        with self._lock:
            self._held.clear()
            self._points = 0
            self.sparse.clear()
            self.generation += 1

    def use_pulse(self, pulse: frozenset[str]) -> None:
        """The PULSE datastreams the points are read with: held points of others are dropped."""
        if pulse != self.pulse:
            self.clear()
            self.pulse = pulse

    def take(self, streams: Iterable[Stream]) -> dict[Stream, Held]:
        with self._lock:
            out: dict[Stream, Held] = {}
            for s in streams:
                held = self._held.get(s)
                if held is not None:
                    self._held.move_to_end(s)
                    out[s] = held
            return out

    def too_sparse(self, streams: Iterable[Stream], now_s: float) -> None:
        """Streams not to hold for SPARSE_FOR_S: a few points per window cost less to read again
        than to keep in step."""
        with self._lock:
            if len(self.sparse) > 100 * self.max_streams:
                self.sparse = {k: t for k, t in self.sparse.items() if now_s - t < SPARSE_FOR_S}
            self.sparse.update((k, now_s) for k in streams)

    def is_sparse(self, stream: Stream, now_s: float) -> bool:
        since = self.sparse.get(stream)
        return since is not None and now_s - since < SPARSE_FOR_S

    def drop(self, streams: Iterable[Stream]) -> None:
        with self._lock:
            for k in streams:
                old = self._held.pop(k, None)
                self._points -= len(old) if old is not None else 0

    def put(self, items: Sequence[tuple[Stream, Held]], generation: int) -> None:
        with self._lock:
            if generation != self.generation:
                return
            for stream, held in items:
                old = self._held.pop(stream, None)
                self._points -= len(old) if old is not None else 0
                self._held[stream] = held
                self._points += len(held)
            while self._held and (self._points > self.max_points or len(self._held) > self.max_streams):
                _, old = self._held.popitem(last=False)
                self._points -= len(old)

    def count(self, served: int = 0, filled: int = 0, respliced: int = 0) -> None:
        with self._lock:
            self.served += served
            self.filled += filled
            self.respliced += respliced
