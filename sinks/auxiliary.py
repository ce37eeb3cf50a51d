"""ClickHouse side of auxiliary records (meter Reset markers): the `datum_auxiliary_raw` table,
the public `datum_auxiliary` view, and the reads the rollup maintainer needs.

A change is an insert: a store inserts the record, a delete inserts a tombstone (deleted = 1)
under the same key, a move does both in one insert. The newest version of a key wins, so
applying the same change twice leaves the same state. See docs/rollups.md ("Resets").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from clickhouse_connect.driver.client import Client

from processors.auxiliary import AuxChange, AuxKey, AuxRecord
from processors.rollup import ResetMarker
from sinks.base import Sink
from sinks.clickhouse import (
    RANGES_CHUNK,
    Range,
    backpressure,
    cluster_of,
    final_rows,
    insert_kwargs,
    ranges_join,
    require_distributed,
    sql_ms,
    sql_stream,
    union_all,
)
from sinks.ddl import Cluster, Engine, SchemaObject, Table, View, statements
from sinks.sql import sql_str

AUX_TABLE = "datum_auxiliary_raw"
AUX_VIEW = "datum_auxiliary"

AUX_OBJECTS: list[SchemaObject] = [
    Table(
        AUX_TABLE,
        columns=(
            ("node_id", "UInt64"),
            ("source_id", "LowCardinality(String)"),
            ("type", "LowCardinality(String)"),
            ("created", "DateTime64(3, 'UTC')"),
            ("final", "Map(String, Float64)"),
            ("start", "Map(String, Float64)"),
            ("notes", "String"),
            ("deleted", "UInt8"),
            ("version", "UInt64"),
        ),
        comment=("One live row per (node, source, type, created); the newest change wins.",),
        engine=Engine("ReplacingMergeTree", ("version",)),
        order_by=("node_id", "source_id", "type", "created"),
    ),
    View(
        AUX_VIEW,
        AUX_TABLE,
        (
            "SELECT node_id, source_id, type, created, final, start, notes",
            "FROM {table} FINAL",
            "WHERE deleted = 0",
        ),
    ),
]
# The statements on one server (as the store has always been made).
AUX_SCHEMA = statements(AUX_OBJECTS)
_COLUMNS = ["node_id", "source_id", "type", "created", "final", "start", "notes", "deleted", "version"]

_lock = threading.Lock()
_last_version = 0


def _next_version() -> int:
    """Microseconds, strictly increasing in this process: a delete right after a store of the
    same key must win even inside one clock tick."""
    global _last_version
    with _lock:
        _last_version = max(_last_version + 1, time.time_ns() // 1000)
        return _last_version


def ensure_aux_schema(client: Client, cluster: str = "") -> None:
    target = cluster_of(client, cluster)
    for ddl in statements(AUX_OBJECTS, target):
        client.command(ddl)
    if target is not None:
        require_distributed(client, target, AUX_OBJECTS)


def _row(record: AuxRecord | None, key: AuxKey, deleted: int, version: int) -> list[object]:
    final = dict(record.final) if record else {}
    start = dict(record.start) if record else {}
    notes = record.notes if record else ""
    return [key.node_id, key.source_id, key.type, key.created_ms, final, start, notes, deleted, version]


class AuxiliarySink(Sink[Sequence[AuxChange], int]):
    """Auxiliary records (meter resets): a batch of changes applied in order in one insert."""

    def __init__(self, client: Client, cluster: str = "") -> None:
        self.client = client
        self.cluster_name = cluster
        self.cluster = cluster_of(client, cluster)

    def setup(self) -> None:
        ensure_aux_schema(self.client, self.cluster_name)

    def write(self, batch: Sequence[AuxChange]) -> int:
        with backpressure(f"auxiliary insert of {len(batch)} change(s)"):
            return write_changes(self.client, batch, self.cluster)


def write_changes(client: Client, changes: Sequence[AuxChange], cluster: Cluster | None = None) -> int:
    """Apply changes in their order, in one insert; returns rows written.

    No deduplication token on a cluster: every attempt gives each change a new version, so a
    batch has no identity that survives a retry; applying a change again leaves the same state
    (the newest version of a key wins)."""
    data: list[list[object]] = []
    for change in changes:
        if change.removed is not None:
            data.append(_row(None, change.removed, 1, _next_version()))
        if change.record is not None:
            data.append(_row(change.record, change.record.key, 0, _next_version()))
    if data:
        client.insert(AUX_TABLE, data, column_names=_COLUMNS, **insert_kwargs(cluster))
    return len(data)


def stored_properties(client: Client, keys: Sequence[AuxKey]) -> list[frozenset[str]]:
    """The properties each stored record names (empty if there is none): what a delete or
    move takes away, so which rollups it makes stale."""
    if not keys:
        return []
    parts = [
        f"SELECT {n} AS q, mapKeys(final) AS p FROM {AUX_VIEW}"
        f" WHERE {sql_stream(k.node_id, k.source_id)} AND type = {sql_str(k.type)} AND created = {sql_ms(k.created_ms)}"
        for n, k in enumerate(keys)
    ]
    out: list[frozenset[str]] = [frozenset() for _ in keys]
    for q, props in union_all(client, parts):
        out[q] = frozenset(out[q] | set(props))
    return out


def streams_with_resets(client: Client) -> set[tuple[int, str]]:
    """The streams (node, source) with any reset marker stored, deleted or not: a rollup step
    looks for the reset markers of these only. Reset markers are rare (a meter replaced), and
    two lookups of them a step cost the store more than this one (issue 13)."""
    rows = client.query(f"SELECT DISTINCT node_id, toString(source_id) FROM {AUX_TABLE} WHERE type = 'Reset'")
    return {(int(node), str(source)) for node, source in rows.result_rows}


def read_resets(client: Client, ranges: Sequence[tuple[int, str, int, int]]) -> list[list[ResetMarker]]:
    """Reset markers of each (node, source, start_ms, end_ms) range, in one query per
    RANGES_CHUNK ranges."""
    out: list[list[ResetMarker]] = [[] for _ in ranges]
    numbered: list[Range] = [(n, node, source, lo, hi) for n, (node, source, lo, hi) in enumerate(ranges)]
    source, live = final_rows(AUX_TABLE, "a", live=True)
    for k in range(0, len(numbered), RANGES_CHUNK):
        result = client.query(
            f"SELECT w.q, toUnixTimestamp64Milli(a.created), a.final, a.start FROM {source}"
            f"{ranges_join('a', numbered[k : k + RANGES_CHUNK])} AND a.type = 'Reset'{live}"
        )
        for q, t, final, start in result.result_rows:
            out[q].append(
                ResetMarker(
                    int(t), {str(p): float(v) for p, v in final.items()}, {str(p): float(v) for p, v in start.items()}
                )
            )
    return out
