"""`recompute` over columns: one stream's raw points as one array per field and (property, kind),
equal to processors/rollup.py's `recompute` row for row and float for float.

The rollup agent spends most of its time recomputing half hours from raw (issue 13): one
`RawPoint` per stored sample, and per point a bucket lookup and a few dict updates. Here a
series (the points of one property and kind, sorted by created) is cut into buckets with one
`searchsorted`, and each bucket's figures come from C loops over its slice. Where an exact
float result depends on the order of additions (sums, clock shares, reading differences), the
additions are done in the reference's order, one after the other from 0.0, so the figures are
bit-for-bit those of `recompute`; min, max and counts do not depend on order.

A series the fast path does not cover goes through the reference itself, turned back into
points: an accumulating property with a reset marker in the window (a rare chain of readings
and resets), a NaN value, or two points at one instant (the raw view keeps one per instant,
so only a caller's mistake). tests/unit/test_rollup_columns.py compares the two under
Hypothesis.

Pure: no I/O.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial, reduce

import numpy as np
import numpy.typing as npt

from processors.rollup import (
    DEFAULT_TOLERANCES,
    Periodicity,
    RawPoint,
    ResetMarker,
    RollupKind,
    RollupRow,
    Tolerances,
    Zone,
    _accumulating,
    _end_node,
    _mode,
    _simple,
    _start_node,
    blank_rows,
    dedupe_points,
    dedupe_resets,
    window_edges,
)

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]
Tags = tuple[str, ...]
_NO_TAGS: frozenset[str] = frozenset()


@dataclass(frozen=True, eq=False)
class Series:
    """The points of one (property, kind) of one stream, sorted by created.

    value: NaN where `null` (no value stored, or for kind 's' no text); texts: kind 's' only, one
    per point; tags: one
    tuple per point, or None when no point has any (the common case: nothing to unite).
    """

    property: str
    kind: RollupKind
    created: I64
    value: F64
    null: Mask
    texts: Sequence[str] | None = None
    tags: Sequence[Tags] | None = None
    # `fast()` found beforehand, for many series at once by whoever cut them (None: not known)
    known_fast: bool | None = None

    def __len__(self) -> int:
        return len(self.created)

    def points(self) -> list[RawPoint]:
        """The same points as the reference takes them."""
        tags = [frozenset(t) for t in self.tags] if self.tags is not None else [_NO_TAGS] * len(self)
        if self.kind == "s":
            texts = self.texts if self.texts is not None else [""] * len(self)
            return [
                RawPoint(t, self.property, "s", None, None if n else x, 0, g)
                for t, x, n, g in zip(self.created.tolist(), texts, self.null.tolist(), tags, strict=True)
            ]
        return [
            RawPoint(t, self.property, self.kind, None if n else v, None, 0, g)
            for t, v, n, g in zip(self.created.tolist(), self.value.tolist(), self.null.tolist(), tags, strict=True)
        ]

    def fast(self) -> bool:
        """Whether the column path covers this series (else the reference does): created strictly
        increasing, and no NaN among the values."""
        if self.known_fast is not None:
            return self.known_fast
        if len(self) > 1 and not bool(np.all(self.created[1:] > self.created[:-1])):
            return False
        return self.kind == "s" or not bool(np.isnan(self.value[~self.null]).any())

    def kept(self) -> tuple[I64, F64, list[str] | None, Sequence[Tags] | None]:
        """created, values, texts and tags of the points that count (a value, or a text)."""
        texts = None
        if self.kind == "s":
            texts = list(self.texts) if self.texts is not None else [""] * len(self)
        if not self.null.any():
            return self.created, self.value, texts, self.tags
        keep = ~self.null
        flags = keep.tolist()
        tags = None if self.tags is None else [g for g, k in zip(self.tags, flags, strict=True) if k]
        if texts is not None:
            texts = [x for x, k in zip(texts, flags, strict=True) if k]
        return self.created[keep], self.value[keep], texts, tags


def series_from_points(points: Iterable[RawPoint]) -> list[Series]:
    """Points (any order, duplicates resolved as the reference does) as series."""
    out: list[Series] = []
    group: list[RawPoint] = []

    def flush() -> None:
        if not group:
            return
        first = group[0]
        tags = [tuple(sorted(p.tags)) for p in group]
        out.append(
            Series(
                first.property,
                first.kind,
                np.array([p.created_ms for p in group], dtype=np.int64),
                np.array([np.nan if p.value is None else p.value for p in group], dtype=np.float64),
                np.array([(p.text if first.kind == "s" else p.value) is None for p in group], dtype=np.bool_),
                [p.text or "" for p in group] if first.kind == "s" else None,
                tags if any(tags) else None,
            )
        )
        group.clear()

    for p in dedupe_points(points):  # sorted by (property, kind, created)
        if group and (group[0].property, group[0].kind) != (p.property, p.kind):
            flush()
        group.append(p)
    flush()
    return out


def recompute_series(
    series: Iterable[Series],
    resets: Iterable[ResetMarker],
    window_start_ms: int,
    window_end_ms: int,
    periodicity: Periodicity,
    tz: Zone,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
    node_id: int = 0,
    source_id: str = "",
) -> list[RollupRow]:
    """`recompute` of the same points given as series (one per property and kind)."""
    # The parameters and the first lines repeat processors/rollup.py's `recompute` on purpose: this
    # is its columnar fast path, a drop-in with the same signature, and the reference stays beside it.
    edges = window_edges(window_start_ms, window_end_ms, periodicity, tz)
    if not edges:
        return []
    row = blank_rows(periodicity, node_id, source_id, edges)
    rst = dedupe_resets(resets)
    reset_props = {prop for r in rst for prop in r.final if r.applies_to(prop)}
    by_key: dict[tuple[str, RollupKind], Series] = {(s.property, s.kind): s for s in series}
    keys: set[tuple[str, RollupKind]] = set(by_key) | {(prop, "a") for prop in reset_props}

    out: list[RollupRow] = []
    for prop, kind in sorted(keys):
        s = by_key.get((prop, kind))
        blank = partial(row, prop, kind)
        if s is None or (kind == "a" and prop in reset_props) or not s.fast():
            pts = [] if s is None else s.points()
            if kind == "a":
                out += _accumulating(pts, rst, prop, edges, tolerances, blank)
            else:
                out += _simple(pts, kind, edges, blank)
        elif kind == "a":
            out += _accumulating_columns(s, edges, tolerances, blank)
        else:
            out += _simple_columns(s, edges, blank)
    return out


def _add(values: Iterable[float]) -> float:
    # from 0.0, one after the other: the reference's `total.get(k, 0.0) + v`
    return reduce(operator.add, values, 0.0)


def _united(tags: Sequence[Tags] | None, a: int, b: int) -> Tags:
    if tags is None:
        return ()
    return tuple(sorted(set().union(*tags[a:b])))


def _simple_columns(s: Series, edges: Sequence[int], blank: Callable[..., RollupRow]) -> list[RollupRow]:
    created, value, texts, tags = s.kept()
    pos = np.searchsorted(created, np.asarray(edges, dtype=np.int64), "left").tolist()
    values = value.tolist() if texts is None else []
    out: list[RollupRow] = []
    for k in range(len(edges) - 1):
        a, b = pos[k], pos[k + 1]
        if a == b:
            continue
        n, tg = b - a, _united(tags, a, b)
        if texts is not None:
            sc = tuple(sorted(Counter(texts[a:b]).items()))
            out.append(blank(k, count=n, mode=_mode(sc), status_counts=sc, tags=tg))
            continue
        part = values[a:b]
        total = _add(part)
        if s.kind == "p":
            out.append(blank(k, count=n, diff=total, tags=tg))
        else:
            out.append(blank(k, count=n, avg=total / n, min=min(part), max=max(part), tags=tg))
    return out


def _sums_by_bucket(buckets: npt.NDArray[np.int64], values: list[float]) -> dict[int, float]:
    """Per bucket, its values added in the order given (buckets ascending along the values)."""
    if not values:
        return {}
    cuts = (np.flatnonzero(buckets[1:] != buckets[:-1]) + 1).tolist()
    starts, ends = [0, *cuts], [*cuts, len(values)]
    keys = buckets[starts].tolist()
    return {k: _add(values[a:b]) for k, a, b in zip(keys, starts, ends, strict=True)}


def _accumulating_columns(
    s: Series, edges: Sequence[int], tol: Tolerances, blank: Callable[..., RollupRow]
) -> list[RollupRow]:
    """`_accumulating` for a chain of readings only (no reset names the property)."""
    t, v, _, tags = s.kept()
    nb = len(edges) - 1
    e = np.asarray(edges, dtype=np.int64)
    pos = np.searchsorted(t, e, "left")
    count = np.diff(pos)
    live = set(np.flatnonzero(count).tolist())
    diff: dict[int, float] = {}
    read: dict[int, float] = {}
    if len(t) > 1:
        a, b = t[:-1], t[1:]
        length = b - a  # > 0: one reading per instant
        inc = v[1:] - v[:-1]
        # Clock shares: a pair of length <= clock tolerance shares its increase among the buckets
        # it overlaps, pro rata. Most pairs lie in one bucket; a pair across an edge has pieces.
        pairs = np.flatnonzero(length <= tol.clock_ms)
        pa, pb = a[pairs], b[pairs]
        k0 = np.maximum(np.searchsorted(e, pa, "right") - 1, 0)
        kend = np.minimum(np.searchsorted(e, pb, "left"), nb)
        one = np.flatnonzero(kend - k0 == 1)
        k1 = k0[one]
        overlap = np.minimum(pb[one], e[k1 + 1]) - np.maximum(pa[one], e[k1])
        share = inc[pairs[one]] * overlap.astype(np.float64) / length[pairs[one]].astype(np.float64)
        ok = overlap > 0
        order = pairs[one][ok].tolist()
        ks = k1[ok].tolist()
        vals = share[ok].tolist()
        sub = [0] * len(order)
        for j in np.flatnonzero(kend - k0 > 1).tolist():
            i = int(pairs[j])
            ai, bi, li, di = int(a[i]), int(b[i]), int(length[i]), float(inc[i])
            for n, k in enumerate(range(int(k0[j]), int(kend[j]))):
                ov = min(bi, edges[k + 1]) - max(ai, edges[k])
                if ov > 0:
                    order.append(i)
                    sub.append(n)
                    ks.append(k)
                    vals.append(di * ov / li)
        if order:
            rank = np.lexsort((np.asarray(sub), np.asarray(order)))
            kk = np.asarray(ks, dtype=np.int64)[rank]
            diff = _sums_by_bucket(kk, [vals[r] for r in rank.tolist()])
            live.update(diff)
        # Reading differences: to the bucket whose (start, end] holds the pair's later reading.
        chained = np.flatnonzero(length <= tol.lookback_ms)
        kr = np.searchsorted(e, b[chained], "left") - 1
        inside = (kr >= 0) & (kr < nb)
        read = _sums_by_bucket(kr[inside], inc[chained[inside]].tolist())
        live.update(read)
    times = t.tolist()
    values = v.tolist()
    starts = pos.tolist()
    out: list[RollupRow] = []
    for k in sorted(live):
        lo, hi = edges[k], edges[k + 1]
        first = _start_node(times, (), lo, hi, tol.lookback_ms)
        last = _end_node(times, hi, tol.lookback_ms)
        out.append(
            blank(
                k,
                count=int(count[k]),
                diff=diff.get(k, 0.0),
                read_diff=read.get(k, 0.0),
                read_start=None if first is None else values[first],
                read_end=None if first is None or last is None else values[last],
                tags=_united(tags, starts[k], starts[k + 1]),
            )
        )
    return out
