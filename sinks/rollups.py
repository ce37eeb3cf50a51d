"""ClickHouse side of rollups: the `rollup_raw` table, the public `rollup` view, and the reads
and writes the rollup maintainer (pipeline/worker/rollups.py) needs. The figures themselves come from
processors/rollup.py; nothing here computes.

A rollup row is replaced, never updated: every recompute of a bucket inserts a fresh row with a
newer `computed`, and a recompute that finds a bucket empty inserts a tombstone (deleted = 1).
The view reads `FINAL` and hides tombstones. See docs/rollups.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.summary import QuerySummary

from processors.point_cache import POINT_SCHEMA
from processors.rollup import (
    CASCADE_SOURCE,
    DEFAULT_TOLERANCES,
    PERIODICITIES,
    Periodicity,
    RollupKind,
    RollupRow,
    Tolerances,
    cascade,
)
from processors.rollup_columns import Series
from processors.rollup_running import KINDS, RollupColumns, RowChunk
from sinks.auxiliary import AUX_TABLE, ensure_aux_schema
from sinks.base import Sink
from sinks.clickhouse import (
    RANGES_CHUNK,
    RAW_TABLE,
    UTC_MS,
    NamedRange,
    Range,
    backpressure,
    cluster_of,
    final_rows,
    insert_kwargs,
    ranges_join,
    require_distributed,
)
from sinks.ddl import Cluster, Engine, SchemaObject, Table, View, statements
from sinks.dedup import batch_token
from sinks.sql import sql_str

ROLLUP_TABLE = "rollup_raw"
ROLLUP_VIEW = "rollup"
DAY_MS = 86_400_000
# How far the first neighbour lookup reaches; a second one reaches the look-back tolerance.
NEAR_MS = DAY_MS
# How far the first look for a reading next to an instant reaches (neighbours, a window's edges);
# only where it finds none does a second look reach the clock tolerance (an hour by default). A
# dense stream has a reading a second: an hour of them scanned for the one nearest cost the
# store more than the rest of the look (issue 13). Ten minutes covers the usual logging
# intervals (1, 5, 10 minutes) in one look.
FIRST_REACH_MS = 10 * 60_000

ROLLUP_OBJECTS: list[SchemaObject] = [
    Table(
        ROLLUP_TABLE,
        columns=(
            ("periodicity", "LowCardinality(String)"),
            ("node_id", "UInt64"),
            ("source_id", "LowCardinality(String)"),
            ("property", "LowCardinality(String)"),
            ("kind", "LowCardinality(String)"),
            ("ts_start", "DateTime64(3, 'UTC')"),
            ("ts_end", "DateTime64(3, 'UTC')"),
            ("count", "UInt64"),
            ("avg", "Nullable(Float64)"),
            ("min", "Nullable(Float64)"),
            ("max", "Nullable(Float64)"),
            ("diff", "Nullable(Float64)"),
            ("read_diff", "Nullable(Float64)"),
            ("read_start", "Nullable(Float64)"),
            ("read_end", "Nullable(Float64)"),
            ("mode", "String"),
            ("status_counts", "Array(Tuple(String, UInt64))"),
            ("tags", "Array(String)"),
            ("deleted", "UInt8"),
            ("computed", "DateTime64(3, 'UTC') DEFAULT now64(3)"),
        ),
        comment=("A recompute replaces the bucket's row; the newest computation wins.",),
        engine=Engine("ReplacingMergeTree", ("computed",)),
        order_by=("periodicity", "node_id", "source_id", "property", "ts_start"),
    ),
    View(
        ROLLUP_VIEW,
        ROLLUP_TABLE,
        (
            "SELECT periodicity, node_id, source_id, property, kind, ts_start, ts_end, count,",
            "       avg, min, max, diff, read_diff, read_start, read_end, mode, status_counts, tags, computed",
            "FROM {table} FINAL",
            "WHERE deleted = 0",
        ),
    ),
]

# The rollup ledger: which stored batches (stream, raw `inserted` stamp) have had their buckets
# recomputed. Stale marks travel on the broker, which may lose them (an embedded broker keeps
# nothing); a worker that starts recomputes whatever raw batch the ledger does not list.
ROLLUP_DONE_TABLE = "rollup_done"
# How far back a start looks for raw batches without rollups (the ledger keeps a little longer).
REPAIR_WINDOW_DAYS = 30
ROLLUP_OBJECTS.append(
    Table(
        ROLLUP_DONE_TABLE,
        columns=(
            ("node_id", "UInt64"),
            ("source_id", "String"),
            ("inserted", "DateTime64(3, 'UTC')"),
            ("done", "DateTime64(3, 'UTC') DEFAULT now64(3)"),
        ),
        engine=Engine("ReplacingMergeTree", ("done",)),
        order_by=("node_id", "source_id", "inserted"),
        ttl=f"toDateTime(inserted) + toIntervalDay({REPAIR_WINDOW_DAYS + 5})",
    )
)
# The statements on one server (as the store has always been made).
ROLLUP_SCHEMA = statements(ROLLUP_OBJECTS)

ROLLUP_COLUMNS = (
    "periodicity",
    "node_id",
    "source_id",
    "property",
    "kind",
    "ts_start",
    "ts_end",
    "count",
    "avg",
    "min",
    "max",
    "diff",
    "read_diff",
    "read_start",
    "read_end",
    "mode",
    "status_counts",
    "tags",
    "deleted",
)


def ensure_rollup_schema(client: Client, cluster: str = "") -> None:
    """Create what is missing (the reset markers' table too); safe to run at every start. With a
    cluster name, on every host of the cluster (sinks/ddl.py)."""
    ensure_aux_schema(client, cluster)
    target = cluster_of(client, cluster)
    for ddl in statements(ROLLUP_OBJECTS, target):
        client.command(ddl)
    if target is not None:
        require_distributed(client, target, ROLLUP_OBJECTS)


_KINDS: dict[str, RollupKind] = {"a": "a", "p": "p", "s": "s"}  # anything else: "i"
# A points read: the window (or range) number, then the points as the point cache holds them.
_POINTS = pa.schema([pa.field("q", pa.uint32()), *POINT_SCHEMA])


def _points_sql(ranges: Sequence[Range] | Sequence[NamedRange], pulse: frozenset[str] = frozenset()) -> str:
    """Every raw point in each range, tagged with the range's q; with named ranges, only of the
    property named."""
    # Instantaneous samples of a PULSE datastream (OpenGate) roll up as sums: kind 'p'.
    kind = "toString(d.kind)"
    if pulse:
        names = ", ".join(sql_str(d) for d in sorted(pulse))
        kind = f"if(d.kind = 'i' AND d.datastream IN ({names}), 'p', toString(d.kind))"
    return (
        f"SELECT w.q AS q, toUnixTimestamp64Milli(d.created) AS t, toString(d.property) AS p,"
        f" {kind} AS k, d.value AS v, d.text AS x, d.tags AS g"
        f" FROM {final_rows(RAW_TABLE, 'd')[0]}{ranges_join('d', ranges, name_column=_named(ranges))}"
    )


def _named(ranges: Sequence[Range] | Sequence[NamedRange]) -> str | None:
    """The column named ranges name (a property), None for plain ones."""
    return "property" if ranges and len(ranges[0]) == 6 else None


def read_points(
    client: Client, ranges: Sequence[Range] | Sequence[NamedRange], pulse: frozenset[str] = frozenset()
) -> pa.Table:
    """Every raw point (`FINAL`) in each range (q, t, p, k, v, x, g), sorted by q, p, k, t; with
    named ranges, only of the property named. The rollup agent's point cache
    (processors/point_cache.py) is filled and kept in step with these."""
    parts = [_points_sql(ranges[k : k + RANGES_CHUNK], pulse) for k in range(0, len(ranges), RANGES_CHUNK)]
    tables = list(_union_arrow(client, parts, chunk=1))
    return pa.concat_tables(tables) if tables else _POINTS.empty_table()


def read_last_after(client: Client, ranges: Sequence[Range]) -> dict[int, int]:
    """Per range (q, node, source, lo, hi), the last `created` of any raw row of the stream in
    it, for the ranges that have one. No `FINAL`: whether a row is there is all it tells."""
    out: dict[int, int] = {}
    for k in range(0, len(ranges), RANGES_CHUNK):
        sql = (
            "SELECT w.q, toUnixTimestamp64Milli(max(d.created)) FROM"
            f" {RAW_TABLE} AS d{ranges_join('d', ranges[k : k + RANGES_CHUNK])} GROUP BY w.q"
        )
        out.update((int(q), int(t)) for q, t in client.query(sql).result_rows)
    return out


def read_processed_after(
    client: Client, ranges: Sequence[Range], window_days: int = REPAIR_WINDOW_DAYS, cluster: str = ""
) -> set[int]:
    """The ranges (q, node, source, lo, hi) holding a raw point (its latest version, `FINAL`)
    whose batch the rollup ledger lists as rolled up, or stored before the ledger's window: a
    point the stored rollups already count. Running rollups seeded for a stream's first step
    stop at the step's last reading; a counted point after it would be dropped from the rows
    they write (a point not yet rolled up has marks to come, which append it)."""
    out: set[int] = set()
    kwargs: dict[str, Any] = {"settings": {"distributed_product_mode": "local"}} if cluster else {}
    for k in range(0, len(ranges), RANGES_CHUNK):
        chunk = ranges[k : k + RANGES_CHUNK]
        nodes = ", ".join(str(n) for n in sorted({int(r[1]) for r in chunk}))
        sql = (
            f"SELECT DISTINCT w.q FROM {final_rows(RAW_TABLE, 'd')[0]}{ranges_join('d', chunk)}"
            f" AND ((d.node_id, toString(d.source_id), d.inserted) IN (SELECT node_id, source_id, inserted"
            f" FROM {ROLLUP_DONE_TABLE} WHERE node_id IN ({nodes}))"
            f" OR d.inserted < now64(3) - toIntervalDay({int(window_days)}))"
        )
        out.update(int(r[0]) for r in client.query(sql, **kwargs).result_rows)
    return out


def read_readings_before(client: Client, ranges: Sequence[NamedRange]) -> dict[int, tuple[int, float]]:
    """Per named range (q, node, source, property, lo, hi), the latest accumulating reading of the
    property before hi and at or after lo (created, value), where it has one: first within
    FIRST_REACH_MS of hi (a dense stream's hour of readings is not scanned for it), then, for the
    ranges without one, the rest of the way to lo."""
    out: dict[int, tuple[int, float]] = {}

    def look(asked: Sequence[NamedRange]) -> None:
        for k in range(0, len(asked), RANGES_CHUNK):
            for row in client.query(_edge_sql(asked[k : k + RANGES_CHUNK], last=True)).result_rows:
                out[int(row[0])] = (int(row[1]), float(row[4]))

    near = [(q, n, s, p, max(lo, hi - FIRST_REACH_MS), hi) for q, n, s, p, lo, hi in ranges]
    look(near)
    far = [(q, n, s, p, lo, near_lo) for (q, n, s, p, lo, _hi), (*_, near_lo, _h) in zip(ranges, near, strict=True)]
    look([r for r in far if r[0] not in out and r[4] < r[5]])
    return out


def _edge_sql(ranges: Sequence[Range] | Sequence[NamedRange], *, last: bool) -> str:
    """Per range and property, the latest (last=True) or first accumulating reading in it; with
    named ranges, only of the property named."""
    pick, arg = ("max", "argMax") if last else ("min", "argMin")
    named = bool(ranges) and len(ranges[0]) == 6
    join = ranges_join("d", ranges, name_column="property" if named else None)
    return (
        f"SELECT w.q AS q, toUnixTimestamp64Milli({pick}(d.created)) AS t, toString(d.property) AS p,"
        f" 'a' AS k, {arg}(d.value, d.created) AS v, '' AS x, {arg}(d.tags, d.created) AS g"
        f" FROM {final_rows(RAW_TABLE, 'd')[0]}{join} AND d.kind = 'a' AND d.value IS NOT NULL GROUP BY w.q, d.property"
    )


@dataclass(frozen=True)
class Window:
    """One stream's window [start_ms, end_ms) to recompute."""

    node_id: int
    source_id: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class PointColumns:
    """An Arrow result of (q, t, p, k, v, x, g) sorted by q, p, k, t, as arrays: q, created,
    property and kind as indices into `props` and `kinds`, value (NaN where null), null, the
    text and tag columns as read, whether each row has tags, and where each (q, p, k) group
    starts."""

    q: npt.NDArray[Any]
    t: npt.NDArray[np.int64]
    pi: npt.NDArray[Any]
    ki: npt.NDArray[Any]
    props: list[str]
    kinds: list[str]
    value: npt.NDArray[np.float64]
    null: npt.NDArray[np.bool_]
    x: pa.Array
    g: pa.Array
    tagged: npt.NDArray[np.bool_]
    starts: npt.NDArray[np.int64]

    @staticmethod
    def of(table: pa.Table) -> PointColumns:
        def col(name: str) -> pa.Array:
            return table.column(name).combine_chunks()

        q = col("q").to_numpy(zero_copy_only=False)
        t = col("t").to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        p, k = pc.dictionary_encode(col("p")), pc.dictionary_encode(col("k"))
        pi, ki = p.indices.to_numpy(zero_copy_only=False), k.indices.to_numpy(zero_copy_only=False)
        v, g = col("v"), col("g")
        cut = np.flatnonzero((q[1:] != q[:-1]) | (pi[1:] != pi[:-1]) | (ki[1:] != ki[:-1])) + 1
        return PointColumns(
            q,
            t,
            pi,
            ki,
            p.dictionary.to_pylist(),
            k.dictionary.to_pylist(),
            v.fill_null(math.nan).to_numpy(zero_copy_only=False).astype(np.float64, copy=False),
            v.is_null().to_numpy(zero_copy_only=False),
            col("x"),
            g,
            pc.list_value_length(g).to_numpy(zero_copy_only=False) > 0,
            np.concatenate([[0], cut]).astype(np.int64),
        )


def _series_of(table: pa.Table) -> list[tuple[int, Series]]:
    """(window, series) of an Arrow result of (q, t, p, k, v, x, g) sorted by q, p, k, t: one
    series per (q, p, k), without a Python object per row (texts and tags only where present)."""
    n = table.num_rows
    if n == 0:
        return []
    c = PointColumns.of(table)
    q, t, pi, ki, props, kinds = c.q, c.t, c.pi, c.ki, c.props, c.kinds
    value, null, x, g, tagged = c.value, c.null, c.x, c.g, c.tagged
    cut = c.starts[1:]
    starts, ends = c.starts.tolist(), [*cut.tolist(), n]
    # Series.fast() of every series at once (a fleet's series hold a few points each): a point at or
    # before the one before it in its series, or a NaN value (a status's NaN is its missing number)
    bad = np.zeros(n, np.bool_)
    bad[1:] = t[1:] <= t[:-1]
    bad[cut] = False
    is_status = np.asarray([kind == "s" for kind in kinds], np.bool_)[ki]
    bad |= np.isnan(value) & ~null & ~is_status
    slow = np.logical_or.reduceat(bad, starts).tolist()
    out: list[tuple[int, Series]] = []
    for a, b, not_fast in zip(starts, ends, slow, strict=True):
        kind = kinds[ki[a]]
        texts = x.slice(a, b - a).to_pylist() if kind == "s" else None
        tags = None
        if tagged[a:b].any():
            tags = [tuple(tg) for tg in g.slice(a, b - a).to_pylist()]
        out.append(
            (
                int(q[a]),
                Series(
                    props[pi[a]],
                    _KINDS.get(kind, "i"),
                    t[a:b],
                    value[a:b],
                    null[a:b] if kind != "s" else np.zeros(b - a, np.bool_),
                    texts,
                    tags,
                    known_fast=not not_fast,
                ),
            )
        )
    return out


def _prepend(before: Series, held: Series) -> Series:
    """held with the points of `before` (all earlier) in front."""
    tags = (
        None
        if held.tags is None and before.tags is None
        else [*(before.tags or [()] * len(before)), *(held.tags or [()] * len(held))]
    )
    return Series(
        held.property,
        held.kind,
        np.concatenate([before.created, held.created]),
        np.concatenate([before.value, held.value]),
        np.concatenate([before.null, held.null]),
        None,
        tags,
    )


def _union_arrow(client: Client, parts: Sequence[str], chunk: int = 100) -> Iterator[pa.Table]:
    """The Arrow results of SELECTs of one shape (q, t, p, k, v, x, g), sorted by q, p, k, t."""
    for k in range(0, len(parts), chunk):
        yield client.query_arrow(f"SELECT * FROM ({' UNION ALL '.join(parts[k : k + chunk])}) ORDER BY q, p, k, t")


def read_series_for_recompute(
    client: Client,
    windows: Sequence[Window],
    tolerances: Tolerances = DEFAULT_TOLERANCES,
    pulse: frozenset[str] = frozenset(),
    served: Collection[int] = (),
    held: pa.Table | None = None,
) -> list[list[Series]]:
    """What `recompute_series(..., start_ms, end_ms, ...)` needs of each window's stream, in
    one or two queries for all windows, read as Arrow columns: the points in the window and,
    per accumulating property, the latest reading before it and the first at or after its end,
    when close enough to matter.

    Identical results to passing [start - lookback, end + lookback] (docs/rollups.md):
    * after the window, a reading matters only as the end of a pair no longer than the clock
      tolerance that starts in the window, or exactly at the window end: the first reading in
      [end, end + clock] is enough;
    * before the window, a reading matters for a clock share only within the clock tolerance
      of the start; further back only through a pair into a reading in [start, end] (its
      reading difference and the bucket's reading start), so only the properties with such a
      reading are looked up as far as the look-back; a reading farther back than the look-back
      from its successor counts for nothing, so reaching past it changes nothing.

    The edge before first reaches only FIRST_REACH_MS, the edge after the clock tolerance: a
    dense stream (a reading a second) has thousands of readings in an hour, and scanning them for
    one edge reading was most of a refresh's time (issue 13); a sparser stream pays one more,
    small query for the rest of the clock tolerance, and one for the look-back.

    `served`: windows (by number) whose points and edges within the clock tolerance are in
    `held` instead, as the store would answer them (the rollup agent's point cache,
    `processors.point_cache.window_rows`, q numbering the window, sorted by q, p, k, t); only
    the look-back is read for those.
    """
    near = tolerances.clock_ms + 1
    reach = min(FIRST_REACH_MS, near)
    got: list[dict[tuple[str, str], Series]] = [{} for _ in windows]
    served = set(served)
    if held is not None and held.num_rows:
        for n, series in _series_of(held):
            got[n][(series.property, series.kind)] = series
    numbered = [(n, w) for n, w in enumerate(windows) if n not in served]
    for k in range(0, len(numbered), RANGES_CHUNK):
        part = numbered[k : k + RANGES_CHUNK]
        # one q per window for the three: sorted by time, before < window < after
        inside = [(n, w.node_id, w.source_id, w.start_ms, w.end_ms) for n, w in part]
        before = [(n, w.node_id, w.source_id, w.start_ms - reach, w.start_ms) for n, w in part]
        after = [(n, w.node_id, w.source_id, w.end_ms, w.end_ms + near) for n, w in part]
        sql = [_points_sql(inside, pulse), _edge_sql(before, last=True), _edge_sql(after, last=False)]
        for table in _union_arrow(client, sql):
            for n, series in _series_of(table):
                got[n][(series.property, series.kind)] = series
    # The rest of the clock tolerance before the window, for each accumulating property read with
    # no reading found before it in the first reach. Only a property with a reading in the window
    # or after it within the clock tolerance can pair with one before it: no other is missed.
    rest: list[NamedRange] = []
    if near > reach:
        for n, w in numbered:
            for (prop, kind), s in got[n].items():
                if kind == "a" and not bool((s.created[~s.null] < w.start_ms).any()):
                    rest.append((n, w.node_id, w.source_id, prop, w.start_ms - near, w.start_ms - reach))
    _prepend_edges(client, got, rest)
    far: list[NamedRange] = []
    if tolerances.lookback_ms > near:
        for n, w in enumerate(windows):
            for (prop, kind), s in got[n].items():
                if kind != "a":
                    continue
                c = s.created[~s.null]
                if bool(((c >= w.start_ms) & (c <= w.end_ms)).any()) and not bool((c < w.start_ms).any()):
                    far.append(
                        (n, w.node_id, w.source_id, prop, w.start_ms - tolerances.lookback_ms, w.start_ms - near)
                    )
    _prepend_edges(client, got, far)
    return [list(series.values()) for series in got]


def _prepend_edges(client: Client, got: list[dict[tuple[str, str], Series]], ranges: Sequence[NamedRange]) -> None:
    """The latest reading of each named range (q: a window, name: a property read in it), put in
    front of that window's series of the property."""
    for k in range(0, len(ranges), RANGES_CHUNK):
        for table in _union_arrow(client, [_edge_sql(ranges[k : k + RANGES_CHUNK], last=True)]):
            for n, before_edge in _series_of(table):
                held = got[n][(before_edge.property, before_edge.kind)]
                got[n][(before_edge.property, before_edge.kind)] = _prepend(before_edge, held)


@dataclass(frozen=True)
class NeighbourRequest:
    """The chain nodes next to `at_ms` of one accumulating property of one stream: the one before
    and the one after, or only one of them (the other is answered None)."""

    node_id: int
    source_id: str
    property: str
    at_ms: int
    before: bool = True
    after: bool = True


def _nearest_sql(alias: str, ranges: Sequence[NamedRange], side: int, readings: bool) -> str:
    """The nearest chain node in each range: the latest (side 0) or the earliest (side 1) reading
    of the range's property, or reset marker naming it; tagged `side` for readings, `side + 2`
    for reset markers."""
    pick = "max" if side == 0 else "min"
    if readings:
        source, live = final_rows(RAW_TABLE, alias)
        join = ranges_join(alias, ranges, name_column="property")
        which = f" AND {alias}.kind = 'a' AND {alias}.value IS NOT NULL"
    else:  # a reset marker naming the property in its final readings is a chain node
        source, live = final_rows(AUX_TABLE, alias, live=True)
        join = ranges_join(alias, ranges)
        which = f" AND {alias}.type = 'Reset' AND mapContains({alias}.final, w.name)"
    tag = side if readings else side + 2
    return (
        f"SELECT w.q AS q, toUInt8({tag}) AS side, toUnixTimestamp64Milli({pick}({alias}.created)) AS t"
        f" FROM {source}{join}{which}{live} GROUP BY w.q"
    )


def read_neighbours(
    client: Client, requests: Sequence[NeighbourRequest], clock_ms: int, lookback_ms: int, readings: bool = True
) -> list[tuple[int | None, int | None]]:
    """Per request, its nearest chain node (an accumulating reading of the property, or a reset
    marker naming it) strictly before `at_ms` and no further than the clock tolerance, and
    strictly after it and no further than the look-back: what `stale_buckets` takes as prev and
    next (it ignores a prev further than the clock tolerance and a next further than the
    look-back, so nothing further is looked for).

    One query for all: readings on either side within FIRST_REACH_MS (a dense stream has
    thousands of readings in an hour, and scanning them all for the nearest one was most of the
    cost), reset markers (few) within the clock tolerance before and the look-back after. Then,
    only for the requests with no reading found on a side, a second query reaching the rest of
    the way: the clock tolerance before, the look-back after. A reading found in the first reach
    is nearer than anything the second could find, so the nearest of both is the answer.

    `readings` False: reset markers only (the caller holds the readings: the point cache).
    """
    prev: dict[int, int] = {}
    nxt: dict[int, int] = {}
    read_before: set[int] = set()  # requests whose first reach found a reading before
    read_after: set[int] = set()

    def gather(sql: list[str], first: bool) -> None:
        if not sql:
            return
        for q, side, t in client.query(" UNION ALL ".join(sql)).result_rows:
            into = prev if side % 2 == 0 else nxt
            t = int(t)
            into[q] = t if q not in into else (max(into[q], t) if side % 2 == 0 else min(into[q], t))
            if first and side < 2:
                (read_before if side == 0 else read_after).add(q)

    reach = min(FIRST_REACH_MS, clock_ms)
    numbered = list(enumerate(requests))
    for k in range(0, len(numbered), RANGES_CHUNK):
        part = numbered[k : k + RANGES_CHUNK]
        before: list[NamedRange] = [
            (n, r.node_id, r.source_id, r.property, r.at_ms - reach, r.at_ms) for n, r in part if r.before
        ]
        resets_before: list[NamedRange] = [
            (n, r.node_id, r.source_id, r.property, r.at_ms - clock_ms, r.at_ms) for n, r in part if r.before
        ]
        after: list[NamedRange] = [
            (n, r.node_id, r.source_id, r.property, r.at_ms + 1, r.at_ms + reach + 1) for n, r in part if r.after
        ]
        far: list[NamedRange] = [
            (n, r.node_id, r.source_id, r.property, r.at_ms + 1, r.at_ms + lookback_ms + 1) for n, r in part if r.after
        ]
        asks = [("d", before, 0, True), ("a", resets_before, 0, False)]
        asks += [("d", after, 1, True), ("a", far, 1, False)]
        gather([_nearest_sql(*ask) for ask in asks if ask[1] and (readings or not ask[3])], first=True)
    if not readings:
        return [(prev.get(n), nxt.get(n)) for n in range(len(requests))]
    # the rest of the way, where the first reach found no reading: before up to the clock
    # tolerance (unless a reset marker nearer than that is the answer), after up to the look-back
    # (or the reset marker found, if nearer)
    rest: list[str] = []
    before_rest: list[NamedRange] = [
        (n, r.node_id, r.source_id, r.property, r.at_ms - clock_ms, r.at_ms - reach)
        for n, r in numbered
        if r.before
        and clock_ms > reach
        and n not in read_before
        and prev.get(n, r.at_ms - clock_ms - 1) < r.at_ms - reach
    ]
    # after: nothing beyond a reset marker found nearer (nxt holds only reset markers here)
    beyond: list[NamedRange] = []
    for n, r in numbered:
        if r.after and lookback_ms > reach and n not in read_after:
            hi = min(nxt.get(n, r.at_ms + lookback_ms), r.at_ms + lookback_ms) + 1
            if hi > r.at_ms + reach + 1:
                beyond.append((n, r.node_id, r.source_id, r.property, r.at_ms + reach + 1, hi))
    for k in range(0, len(before_rest), RANGES_CHUNK):
        rest.append(_nearest_sql("d", before_rest[k : k + RANGES_CHUNK], 0, True))
    for k in range(0, len(beyond), RANGES_CHUNK):
        rest.append(_nearest_sql("d", beyond[k : k + RANGES_CHUNK], 1, True))
    for k in range(0, len(rest), 2):
        gather(rest[k : k + 2], first=False)
    return [(prev.get(n), nxt.get(n)) for n in range(len(requests))]


def rollup_row_columns(alias: str = "") -> str:
    """The SELECT list `rollup_row` reads: a stored row's columns in RollupRow's order, the bucket
    bounds as epoch milliseconds."""
    p = f"{alias}." if alias else ""
    return (
        f"{p}periodicity, {p}node_id, {p}source_id, {p}property, {p}kind, toUnixTimestamp64Milli({p}ts_start),"
        f" toUnixTimestamp64Milli({p}ts_end), {p}count, {p}avg, {p}min, {p}max, {p}diff, {p}read_diff,"
        f" {p}read_start, {p}read_end, {p}mode, {p}status_counts, {p}tags"
    )


def rollup_row(values: Sequence[Any]) -> RollupRow:
    """A RollupRow from one row of `rollup_row_columns`."""
    per, node, source, prop, kind, s, e, count, avg, lo, hi, diff, rdiff, rstart, rend, mode, sc, tags = values
    return RollupRow(
        per,
        int(node),
        str(source),
        prop,
        kind,
        int(s),
        int(e),
        int(count),
        avg,
        lo,
        hi,
        diff,
        rdiff,
        rstart,
        rend,
        mode if kind == "s" else None,
        tuple((str(v), int(c)) for v, c in sc),
        tuple(tags),
    )


def _rollup_reads(requests: Sequence[tuple[int, str, Sequence[tuple[str, int, int]]]], columns: str) -> Iterator[str]:
    """SELECTs of `columns` (of `r`) from the stored (live) rows: per (node, source, ranges), each
    (periodicity, start_ms, end_ms) range is the rows of that level with ts_start in [start_ms,
    end_ms). One per RANGES_CHUNK ranges."""
    ranges: list[NamedRange] = [
        (0, node_id, source_id, per, lo, hi) for node_id, source_id, levels in requests for per, lo, hi in levels
    ]
    source, live = final_rows(ROLLUP_TABLE, "r", live=True)
    for k in range(0, len(ranges), RANGES_CHUNK):
        join = ranges_join("r", ranges[k : k + RANGES_CHUNK], time_column="ts_start", name_column="periodicity")
        yield f"SELECT {columns} FROM {source}{join}{live}"


def read_rollups(
    client: Client,
    requests: Sequence[tuple[int, str, Sequence[tuple[str, int, int]]]],
) -> list[RollupRow]:
    """Stored (live) rows: per (node, source, ranges), each (periodicity, start_ms, end_ms)
    range is the rows of that level with ts_start in [start_ms, end_ms)."""
    out: list[RollupRow] = []
    for sql in _rollup_reads(requests, rollup_row_columns("r")):
        out.extend(rollup_row(values) for values in client.query(sql).result_rows)
    return out


def read_rollup_keys(
    client: Client,
    requests: Sequence[tuple[int, str, Sequence[tuple[str, int, int]]]],
) -> list[tuple[int, str, str, int]]:
    """`read_rollups` of the same requests as keys only: (node, source, property, start ms) of
    each stored (live) row, read as Arrow columns. What a refresh needs of its stored half hours
    unless one of them is a tombstone's or retention's case (issue 13: a fleet's step read
    tens of thousands of whole rows, a `RollupRow` each, to find none of either)."""
    keys = "r.node_id AS n, toString(r.source_id) AS s, toString(r.property) AS p,"
    keys += " toUnixTimestamp64Milli(r.ts_start) AS t"
    out: list[tuple[int, str, str, int]] = []
    for sql in _rollup_reads(requests, keys):
        table = client.query_arrow(sql)
        out.extend(zip(*(table.column(c).to_pylist() for c in ("n", "s", "p", "t")), strict=True))
    return out


# One merged prefix of `read_prefixes`: (q, property, kind) -> count, the added sum (kind i: of
# avg x count; a and p: of diff), min, max, the added read_diff, read start, read end, status
# counts, tags.
Prefix = tuple[
    int, float, float | None, float | None, float, float | None, float | None, dict[str, int], frozenset[str]
]


def read_prefixes(client: Client, ranges: Sequence[NamedRange]) -> dict[tuple[int, str, RollupKind], Prefix]:
    """Per range (q, node, source, periodicity, lo, hi) and (property, kind), the stored (live)
    rows of that level starting in [lo, hi) merged as `processors.rollup._merge` merges children:
    the sums added in time order from 0.0 (as `_cascade_select` adds them: the same bits), kept
    as sums (an average would not give its sum back exactly). What a series' running rollups
    are seeded with (processors/rollup_incremental.py)."""
    source, live = final_rows(ROLLUP_TABLE, "c", live=True)
    out: dict[tuple[int, str, RollupKind], Prefix] = {}
    for k in range(0, len(ranges), RANGES_CHUNK):
        join = ranges_join("c", ranges[k : k + RANGES_CHUNK], time_column="ts_start", name_column="periodicity")
        sql = (
            "SELECT w.q AS q, toString(c.property) AS p, toString(c.kind) AS k, sum(c.count) AS n,"
            " arraySort(groupArray((c.ts_start, toFloat64(c.count), c.avg, c.diff, c.read_diff))) AS seq,"
            " if(k = 'i', arrayFold((acc, x) -> acc + if(x.2 > 0 AND x.3 IS NOT NULL, assumeNotNull(x.3) * x.2, 0.),"
            " seq, 0.), arrayFold((acc, x) -> acc + ifNull(x.4, 0.), seq, 0.)) AS total,"
            " min(c.min) AS low, max(c.max) AS high, arrayFold((acc, x) -> acc + ifNull(x.5, 0.), seq, 0.) AS rd,"
            " argMinIf(c.read_start, c.ts_start, c.read_start IS NOT NULL) AS rs,"
            " argMaxIf(c.read_end, c.ts_start, c.read_end IS NOT NULL) AS re,"
            " sumMap(arrayMap(t -> t.1, c.status_counts), arrayMap(t -> t.2, c.status_counts)) AS sc,"
            " groupUniqArrayArray(c.tags) AS g"
            f" FROM {source}{join}{live} GROUP BY q, p, k"
        )
        table = client.query_arrow(sql)
        cols = [table.column(c).to_pylist() for c in ("q", "p", "k", "n", "total", "low", "high", "rd", "rs", "re")]
        counts = table.column("sc").to_pylist()
        tags = table.column("g").to_pylist()
        for (q, prop, kind, n, total, low, high, rd, rs, re), sc, g in zip(
            zip(*cols, strict=True), counts, tags, strict=True
        ):
            status = dict(zip(sc["1"], sc["2"], strict=True)) if isinstance(sc, dict) else dict(zip(*sc, strict=True))
            out[(int(q), prop, _KINDS.get(kind, "i"))] = (
                int(n),
                float(total),
                low,
                high,
                float(rd),
                rs,
                re,
                {str(v): int(c) for v, c in status.items()},
                frozenset(g),
            )
    return out


def cascade_sql(per: Periodicity, ranges: Sequence[Range]) -> str:
    """`INSERT … SELECT` of the `per` rows of the given parent buckets (q, node, source, start ms,
    end ms), each combined from the stored rows of its finer level (CASCADE_SOURCE) that start
    inside it, plus a tombstone for every stored `per` row of those buckets that no child is left
    for: the cascade of `processors.rollup.combine`, computed where the rows are (issue 13).
    `cascade_levels_sql` of one level."""
    return cascade_levels_sql([(per, ranges)])


def cascade_levels_sql(levels: Sequence[tuple[Periodicity, Sequence[Range]]]) -> str:
    """One `INSERT … SELECT` of several levels' cascades (`cascade_sql`), their SELECTs joined by
    UNION ALL: levels whose finer rows are all stored already (week and month both come from
    days) cost the store one statement, not one each (a statement's planning alone is ~50 ms on
    the embedded endpoint, whatever it carries)."""
    selects = " UNION ALL ".join(_cascade_select(per, ranges) for per, ranges in levels)
    return f"INSERT INTO {ROLLUP_TABLE} ({', '.join(ROLLUP_COLUMNS)}) {selects}"


def _cascade_select(per: Periodicity, ranges: Sequence[Range]) -> str:
    """The SELECT of `cascade_sql`: the rows (and tombstones) of one level's parent buckets.

    Equal to `combine` field for field: per (property, kind) the average weighted by count, min of
    mins, max of maxes, sums of counts and differences (added in time order from 0.0, as `combine`
    adds them: the same bits), the first reading start and the last reading end (by ts_start, over children that
    have one), status counts summed by value with the mode the most frequent value, ties to the
    smallest (`_mode`), tags united and sorted. One scan: the stored parent rows are read with
    the children, each its own group, and kept (as a tombstone) only where its property has no
    child group. The finer level must already hold its fresh rows."""
    src = CASCADE_SOURCE[per]
    assert src is not None, "halfhour rows come from raw"
    source, live = final_rows(ROLLUP_TABLE, "c", live=True)
    # The two levels named on their own too, where the table's key (periodicity first) can skip
    # the other levels' rows (a year's range holds a year of half hours): the condition after it
    # names the range's w.lo, which the engine cannot use for that. No change measured on the
    # benchmark's few hours of rows.
    rows = (
        f"{ranges_join('c', ranges, time_column='ts_start')}{live}"
        f" AND c.periodicity IN ({sql_str(src)}, {sql_str(per)}) AND (c.periodicity = {sql_str(src)}"
        f" OR (c.periodicity = {sql_str(per)} AND toUnixTimestamp64Milli(c.ts_start) = w.lo))"
    )
    # status counts summed by value: (sorted values, their sums)
    counts = "sumMap(arrayMap(t -> t.1, c.status_counts), arrayMap(t -> t.2, c.status_counts))"
    groups = (
        "SELECT c.node_id AS g_node, c.source_id AS g_source, c.property AS g_property, c.kind AS g_kind,"
        f" w.lo AS g_lo, w.hi AS g_hi, c.periodicity = {sql_str(per)} AS g_parent, sum(c.count) AS g_n,"
        # the children in time order, for sums added one after the other from 0.0 as `combine` does
        # (ClickHouse's sum() adds in no set order: a recompute would not give the same bits)
        " arraySort(groupArray((c.ts_start, toFloat64(c.count), c.avg, c.diff, c.read_diff))) AS g_seq,"
        " if(c.kind = 'i' AND g_n > 0, arrayFold((acc, x) -> acc + if(x.2 > 0 AND x.3 IS NOT NULL,"
        " assumeNotNull(x.3) * x.2, 0.), g_seq, 0.) / g_n, NULL) AS g_avg,"
        " if(c.kind = 'i', min(c.min), NULL) AS g_min, if(c.kind = 'i', max(c.max), NULL) AS g_max,"
        " if(c.kind IN ('a', 'p'), arrayFold((acc, x) -> acc + ifNull(x.4, 0.), g_seq, 0.), NULL) AS g_diff,"
        " if(c.kind = 'a', arrayFold((acc, x) -> acc + ifNull(x.5, 0.), g_seq, 0.), NULL) AS g_read_diff,"
        " if(c.kind = 'a', argMinIf(c.read_start, c.ts_start, c.read_start IS NOT NULL), NULL) AS g_read_start,"
        " if(c.kind = 'a', argMaxIf(c.read_end, c.ts_start, c.read_end IS NOT NULL), NULL) AS g_read_end,"
        f" {counts} AS g_counts, arraySort(groupUniqArrayArray(c.tags)) AS g_tags"
        f" FROM {source}{rows}"
        " GROUP BY g_node, g_source, g_property, g_kind, g_lo, g_hi, g_parent"
    )
    # per (property, parent bucket): how many child groups; a stored parent row without one is emptied
    flagged = (
        f"SELECT *, countIf(NOT g_parent) OVER (PARTITION BY g_node, g_source, g_property, g_lo) AS g_kids"
        f" FROM ({groups})"
    )
    return (
        f"SELECT {sql_str(per)}, g_node, g_source, g_property, g_kind,"
        " fromUnixTimestamp64Milli(g_lo, 'UTC'), fromUnixTimestamp64Milli(g_hi, 'UTC'),"
        " if(g_parent, 0, g_n), if(g_parent, NULL, g_avg), if(g_parent, NULL, g_min), if(g_parent, NULL, g_max),"
        " if(g_parent, NULL, g_diff), if(g_parent, NULL, g_read_diff), if(g_parent, NULL, g_read_start),"
        " if(g_parent, NULL, g_read_end),"
        # the mode: the first (smallest) value of the largest count
        " if(NOT g_parent AND g_kind = 's' AND notEmpty(g_counts.1),"
        " g_counts.1[indexOf(g_counts.2, arrayMax(g_counts.2))], ''),"
        " if(g_parent, [], arrayZip(g_counts.1, g_counts.2)), if(g_parent, [], g_tags), g_parent"
        f" FROM ({flagged}) WHERE NOT g_parent OR g_kids = 0"
    )


@dataclass(frozen=True)
class RollupWrite:
    """What one recompute stores: fresh rows, and tombstones for buckets found empty; then, level
    by level, the coarser buckets to combine from the rows below them (`cascade_sql`): per
    periodicity, its stale buckets as (node, source, start ms, end ms)."""

    rows: Sequence[RollupRow]
    tombstones: Sequence[RollupRow] = ()
    cascade: Mapping[Periodicity, Sequence[tuple[int, str, int, int]]] = field(default_factory=dict)
    # the stored rows `combine_here` needs (`cascade_reads` of every bucket), if read already
    stored: Sequence[RollupRow] | None = None
    # rows of every level as columns (running rollups: nothing to cascade), inserted with `rows`
    columns: RollupColumns | None = None


# Stale coarser buckets (all levels) a step may have for its cascade to be combined in the worker
# (`combine_here`); more go to the store (`cascade_stage`). Each cascade statement costs the
# embedded endpoint ~50 ms of planning whatever it carries, four a step (docs/hot-path.md); 300
# buckets are some 50 streams, whose children (~300 rows a stream with a year of history) are
# read in one query.
COMBINE_BUCKETS = 300


def cascade_reads(per: Periodicity, lo: int, hi: int) -> tuple[tuple[str, int, int], tuple[str, int, int]]:
    """What `combine_here` reads of a stale `per` bucket [lo, hi) (`read_rollups` ranges): the
    rows of the level below starting inside it, and its own stored row."""
    src = CASCADE_SOURCE[per]
    assert src is not None, "half hours come from raw"
    return (src, lo, hi), (per, lo, lo + 1)


def combine_here(client: Client, batch: RollupWrite) -> tuple[list[RollupRow], list[RollupRow]]:
    """The batch's rows and tombstones with its whole cascade (`processors.rollup.cascade`): the
    stored children and rows of every stale bucket read in one query, combined here, the
    result for one insert. Equal to the store's cascade (`cascade_stage`), which it replaces
    for a step with few buckets."""
    stored = batch.stored
    if stored is None:
        requests: dict[tuple[int, str], list[tuple[str, int, int]]] = {}
        for per, buckets in batch.cascade.items():
            for node, source, lo, hi in set(buckets):
                requests.setdefault((node, source), []).extend(cascade_reads(per, lo, hi))
        stored = read_rollups(client, [(node, source, ranges) for (node, source), ranges in requests.items()])
    rows, tombstones = cascade(batch.cascade, batch.rows, batch.tombstones, stored)
    return [*batch.rows, *rows], [*batch.tombstones, *tombstones]


class RollupSink(Sink[RollupWrite, int]):
    """Rollup rows replace the stored rows of their buckets (a newer `computed` wins); a
    tombstone hides a bucket found empty. Idempotent: the same recompute writes the same state."""

    def __init__(self, client: Client, cluster: str = "", combine_buckets: int = COMBINE_BUCKETS) -> None:
        self.client = client
        self.cluster_name = cluster
        self.cluster = cluster_of(client, cluster)
        # up to this many stale coarser buckets, the cascade is combined here (`combine_here`)
        self.combine_buckets = combine_buckets

    def setup(self) -> None:
        ensure_rollup_schema(self.client, self.cluster_name)

    def combines_here(self, buckets: int) -> bool:
        """Whether a step with this many stale coarser buckets has its cascade combined here."""
        return 0 < buckets <= self.combine_buckets

    def write(self, batch: RollupWrite) -> int:
        with backpressure(f"rollup insert of {len(batch.rows)} + {len(batch.tombstones)} tombstones"):
            if batch.stored is not None or self.combines_here(sum(len(b) for b in batch.cascade.values())):
                rows, tombstones = combine_here(self.client, batch)
                return write_rollups(self.client, rows, tombstones, self.cluster, batch.columns)
            written = write_rollups(self.client, batch.rows, batch.tombstones, self.cluster, batch.columns)
            # each stage after the one below it: it reads their stored rows
            for stage in CASCADE_STAGES:
                levels = {per: batch.cascade.get(per, ()) for per in stage}
                written += cascade_stage(self.client, levels, self.cluster)
            return written


class RollupLedger(Sink[Iterable[tuple[int, str, int]], int]):
    """The rollup ledger: (node, source, raw `inserted` stamp) batches whose buckets are stored,
    so a restart repairs only what was never rolled up (`not_rolled_up`). Idempotent."""

    def __init__(self, client: Client, cluster: str = "") -> None:
        self.client = client
        self.cluster_name = cluster
        self.cluster = cluster_of(client, cluster)

    def setup(self) -> None:
        ensure_rollup_schema(self.client, self.cluster_name)

    def write(self, batch: Iterable[tuple[int, str, int]]) -> int:
        with backpressure("rollup ledger insert"):
            return mark_rolled_up(self.client, batch, self.cluster)


def write_rollups(
    client: Client,
    rows: Sequence[RollupRow],
    tombstones: Sequence[RollupRow] = (),
    cluster: Cluster | None = None,
    columns: RollupColumns | None = None,
) -> int:
    """Insert rows and tombstones (rows marked deleted) in one insert; returns rows written.

    No deduplication token on a cluster: a recompute reads the store as it is now, so the same
    stale marks again may rightly give other figures, and the newest computation must win (by
    `computed`). A copy of the same figures is replaced like any recompute."""
    table = rollup_arrow(rows, tombstones)
    if columns is not None and len(columns):
        table = pa.concat_tables([table, rollup_columns_arrow(columns)])
    if table.num_rows:
        client.insert_arrow(ROLLUP_TABLE, table, **insert_kwargs(cluster))
    return int(table.num_rows)


_FIGURES = ("avg", "min", "max", "diff", "read_diff", "read_start", "read_end")
# `rollup_raw`'s columns as an insert gives them (ROLLUP_COLUMNS; `computed` is the store's)
ROLLUP_ARROW = pa.schema(
    [
        ("periodicity", pa.string()),
        ("node_id", pa.uint64()),
        ("source_id", pa.string()),
        ("property", pa.string()),
        ("kind", pa.string()),
        ("ts_start", UTC_MS),
        ("ts_end", UTC_MS),
        ("count", pa.uint64()),
        *((name, pa.float64()) for name in _FIGURES),
        ("mode", pa.string()),
        ("status_counts", pa.list_(pa.struct([("1", pa.string()), ("2", pa.uint64())]))),
        ("tags", pa.list_(pa.string())),
        ("deleted", pa.uint8()),
    ]
)
assert tuple(ROLLUP_ARROW.names) == ROLLUP_COLUMNS


def rollup_arrow(rows: Sequence[RollupRow], tombstones: Sequence[RollupRow] = ()) -> pa.Table:
    """Rows, then tombstones, as an Arrow table of ROLLUP_ARROW: one list per column converted
    at once, not a Python value at a time through the insert's own encoder (a fleet's step
    writes tens of thousands of rows; issue 13)."""
    every = [*rows, *tombstones]
    columns: list[Any] = [
        [r.periodicity for r in every],
        [r.node_id for r in every],
        [r.source_id for r in every],
        [r.property for r in every],
        [r.kind for r in every],
        pa.array([r.ts_start_ms for r in every], pa.int64()).cast(UTC_MS),
        pa.array([r.ts_end_ms for r in every], pa.int64()).cast(UTC_MS),
        [r.count for r in every],
        *([getattr(r, name) for r in every] for name in _FIGURES),
        [r.mode or "" for r in every],
        [list(r.status_counts) for r in every],
        [list(r.tags) for r in every],
        np.concatenate([np.zeros(len(rows), np.uint8), np.ones(len(tombstones), np.uint8)]),
    ]
    arrays = [c if isinstance(c, pa.Array) else pa.array(c, f.type) for c, f in zip(columns, ROLLUP_ARROW, strict=True)]
    return pa.Table.from_arrays(arrays, schema=ROLLUP_ARROW)


def rollup_columns_arrow(cols: RollupColumns) -> pa.Table:
    """Running rollups' rows (processors/rollup_running.py) as an Arrow table of ROLLUP_ARROW: the
    numbers from their arrays as they are, texts and lists without a Python object per row but
    the status rows'; the one-at-a-time path's rows after them."""
    tables = [_chunk_arrow(c) for c in cols.chunks if len(c)]
    if cols.rows:
        tables.append(rollup_arrow(cols.rows))
    return pa.concat_tables(tables) if tables else ROLLUP_ARROW.empty_table()


_KIND_TEXT = np.asarray(KINDS, dtype=object)


def _lists(lengths: npt.NDArray[np.int64], values: pa.Array) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _chunk_arrow(c: RowChunk) -> pa.Table:
    n = len(c)
    mode = np.full(n, "", dtype=object)
    for m, x in c.mode.items():
        mode[m] = x
    status_type = ROLLUP_ARROW.field("status_counts").type
    lengths = np.zeros(n, np.int64)
    items: list[tuple[str, int]] = []
    for m in sorted(c.status_counts):
        lengths[m] = len(c.status_counts[m])
        items += c.status_counts[m]
    status = _lists(lengths, pa.array(items, status_type.value_type))
    # tags: each row's set, by its index into the chunk's sets
    set_len = np.asarray([len(g) for g in c.tag_sets], np.int64)
    set_start = np.concatenate([[0], np.cumsum(set_len)[:-1]]).astype(np.int64)
    row_len = set_len[c.tags]
    flat_tags = pa.array([t for g in c.tag_sets for t in g], pa.string())
    within = np.arange(int(row_len.sum()), dtype=np.int64) - np.repeat(np.cumsum(row_len) - row_len, row_len)
    tags = _lists(row_len, flat_tags.take(pa.array(np.repeat(set_start[c.tags], row_len) + within)))
    columns: list[Any] = [
        pa.array(np.full(n, c.periodicity, dtype=object), pa.string()),
        pa.array(c.node_id.astype(np.uint64)),
        pa.array(c.source_id, pa.string()),
        pa.array(c.property, pa.string()),
        pa.array(_KIND_TEXT[c.kind], pa.string()),
        pa.array(c.ts_start).cast(UTC_MS),
        pa.array(c.ts_end).cast(UTC_MS),
        pa.array(c.count.astype(np.uint64)),
        *(pa.array(values, pa.float64(), mask=absent) for values, absent in c.figures),
        pa.array(mode, pa.string()),
        status,
        tags,
        pa.array(np.zeros(n, np.uint8)),
    ]
    return pa.Table.from_arrays(columns, schema=ROLLUP_ARROW)


# The table of buckets travels in the query text, which ClickHouse parses up to `max_query_size`
# bytes (QUERY_BYTES, which every client of the pipeline sets); the statement around it is about
# 3 kB a level. A fleet's stage in one statement rather than three to six (at 200 kB each)
# took the cascade 0.6-0.8 of the time (docs/hot-path.md).
CASCADE_TEXT_BYTES = 4_000_000


def _by_query_size(buckets: Sequence[tuple[int, str, int, int]]) -> Iterator[tuple[list[Range], int]]:
    """The buckets as ranges (q, node, source, lo, hi), as many per statement as its text allows
    (and the text's estimated size): one statement per level for a fleet's batch (one per 1,000
    cost the endpoint twice the time)."""
    chunk: list[Range] = []
    size = 0
    for node, source, lo, hi in buckets:
        row = 50 + 2 * len(source.encode())  # q, node, two instants, tabs; the source escaped at most 2x
        if chunk and size + row > CASCADE_TEXT_BYTES:
            yield chunk, size
            chunk, size = [], 0
        chunk.append((len(chunk), node, source, lo, hi))
        size += row
    if chunk:
        yield chunk, size


# The cascade's levels in the order they can be combined: each from rows stored by a stage
# before it (CASCADE_SOURCE). Week and month both come from days: one statement for both.
CASCADE_STAGES: tuple[tuple[Periodicity, ...], ...] = (("hour",), ("day",), ("week", "month"), ("year",))
assert [p for stage in CASCADE_STAGES for p in stage] == list(PERIODICITIES[1:])
assert all(CASCADE_SOURCE[p] not in stage for stage in CASCADE_STAGES for p in stage)


def cascade_rollups(
    client: Client, per: Periodicity, buckets: Sequence[tuple[int, str, int, int]], cluster: Cluster | None = None
) -> int:
    """Combine the `per` rows of the given buckets (node, source, start ms, end ms) from the stored
    rows below them, tombstoning those left empty (`cascade_sql`); returns rows written, as the
    store reports them. `cascade_stage` of one level."""
    return cascade_stage(client, {per: buckets}, cluster)


def cascade_stage(
    client: Client,
    levels: Mapping[Periodicity, Sequence[tuple[int, str, int, int]]],
    cluster: Cluster | None = None,
) -> int:
    """`cascade_rollups` of levels that need no row of each other (a stage of CASCADE_STAGES),
    in as few statements as their text allows: every level's buckets in one statement when they
    fit (`cascade_levels_sql`). Returns rows written, as the store reports them."""
    written = 0
    kwargs = insert_kwargs(cluster)  # on a cluster, synchronous into the Distributed table
    statement: list[tuple[Periodicity, Sequence[Range]]] = []
    size = 0

    def send() -> None:
        nonlocal written, size
        if statement:
            summary = client.command(cascade_levels_sql(statement), **kwargs)
            written += summary.written_rows if isinstance(summary, QuerySummary) else 0
        statement.clear()
        size = 0

    for per, buckets in levels.items():
        # A bucket named twice would join its children twice (a node that changed zone is two
        # tasks, whose buckets may coincide): each once.
        for chunk, chunk_size in _by_query_size(sorted(set(buckets))):
            if size + chunk_size > CASCADE_TEXT_BYTES:
                send()
            statement.append((per, chunk))
            size += chunk_size
    send()
    return written


def mark_rolled_up(client: Client, batches: Iterable[tuple[int, str, int]], cluster: Cluster | None = None) -> int:
    """Record (node, source, inserted ms) raw batches whose buckets are recomputed and stored. On
    a cluster the rows are their own deduplication token: the same entries again add nothing."""
    rows = sorted(set(batches))
    if rows:
        # the token only where it is used (a cluster): a fleet's step lists tens of thousands
        token = batch_token((), [json.dumps(rows).encode()]) if cluster is not None else None
        nodes, sources, stamps = zip(*rows, strict=True)
        table = pa.table(
            {
                "node_id": pa.array(nodes, pa.uint64()),
                "source_id": pa.array(sources, pa.string()),
                "inserted": pa.array(stamps, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            }
        )
        # columns, not a Python row a batch (the ledger's insert was 5 % of a fleet worker's time)
        client.insert_arrow(ROLLUP_DONE_TABLE, table, **insert_kwargs(cluster, token))
    return len(rows)


def not_rolled_up(
    client: Client, window_days: int = REPAIR_WINDOW_DAYS, cluster: str = ""
) -> list[tuple[int, str, int, list[tuple[str, str, int]]]]:
    """Raw batches stored in the window that the ledger does not list as rolled up:
    (node, source, inserted ms, [(property, kind, created ms), ...]).

    On a cluster both tables are Distributed, which ClickHouse refuses in one IN by default
    (distributed_product_mode 'deny'). 'local' runs the subquery on each shard against its own
    ledger: both tables are sharded by stream, so a shard's ledger holds the entries of exactly
    its raw batches. https://clickhouse.com/docs/reference/settings/session-settings/distributed"""
    from sinks.clickhouse import RAW_TABLE

    kwargs: dict[str, Any] = {"settings": {"distributed_product_mode": "local"}} if cluster else {}
    result = client.query(
        f"SELECT node_id, toString(source_id), toUnixTimestamp64Milli(inserted),"
        f" groupArray((toString(property), toString(kind), toUnixTimestamp64Milli(created)))"
        f" FROM {RAW_TABLE}"
        f" WHERE inserted >= now64(3) - toIntervalDay({int(window_days)})"
        f" AND (node_id, toString(source_id), inserted) NOT IN"
        f" (SELECT node_id, source_id, inserted FROM {ROLLUP_DONE_TABLE})"
        f" GROUP BY node_id, source_id, inserted ORDER BY inserted",
        **kwargs,
    )
    return [
        (int(r[0]), str(r[1]), int(r[2]), [(str(p), str(k), int(c)) for p, k, c in r[3]]) for r in result.result_rows
    ]
