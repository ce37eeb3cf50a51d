"""ClickHouse: the raw datum table, the public `datum` view, and the raw sink.

Table and view names are defined here once. Every statement goes through clickhouse-connect,
so the embedded chDB endpoint and a ClickHouse server are interchangeable.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import urlparse

import clickhouse_connect
import numpy as np
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from processors.columns import RAW_SCHEMA, raw_table
from processors.rows import RAW_COLUMNS, RawColumns
from sinks.base import Sink, SinkBackpressure
from sinks.ddl import Cluster, Engine, SchemaObject, Table, View, alter_table, statements, storage_name
from sinks.dedup import Origin, batch_token
from sinks.sql import sql_str

log = logging.getLogger(__name__)

RAW_TABLE = "datum_raw"
DATUM_VIEW = "datum"
LATEST_TABLE = "datum_latest_raw"
LATEST_VIEW = "datum_latest"
# A raw row goes when its datastream's storage period is over (ttl_days > 0), but never sooner
# than RAW_GRACE_DAYS after it was inserted: a backfill already past its period is kept long
# enough for the rollup agent to compute its buckets from raw (rollups never expire), with room
# for a worker that is down for a while. See docs/rollups.md, "Raw expiry and rollups".
RAW_GRACE_DAYS = 7
RAW_TTL = (
    "greatest(toDateTime(created) + toIntervalDay(ttl_days),"
    f" toDateTime(inserted) + toIntervalDay({RAW_GRACE_DAYS})) WHERE ttl_days > 0"
)

RAW_OBJECTS: list[SchemaObject] = [
    Table(
        RAW_TABLE,
        columns=(
            ("node_id", "UInt64"),
            ("source_id", "LowCardinality(String)"),
            ("created", "DateTime64(3, 'UTC')"),
            ("property", "LowCardinality(String)"),
            ("kind", "Enum8('i' = 1, 'a' = 2, 's' = 3)"),
            ("value", "Nullable(Float64)"),
            ("text", "String"),
            ("tags", "Array(LowCardinality(String))"),
            ("datastream", "LowCardinality(String)"),
            ("score", "Nullable(Float64)"),
            ("performance", "Nullable(Float64)"),
            ("label", "LowCardinality(String)"),
            ("quality", "LowCardinality(String)"),
            ("max_score", "Nullable(Float64)"),
            ("ttl_days", "UInt32"),
            ("inserted", "DateTime64(3, 'UTC') DEFAULT now64(3)"),
        ),
        comment=("One row per (node, source, property, created): a redelivered batch replaces, never adds.",),
        engine=Engine("ReplacingMergeTree", ("inserted",)),
        partition_by="toYYYYMM(created)",
        order_by=("node_id", "source_id", "property", "created"),
        ttl=RAW_TTL,
    ),
    # The public interface: duplicates removed at read time (FINAL) until merges catch up.
    View(
        DATUM_VIEW,
        RAW_TABLE,
        (
            "SELECT node_id, source_id, created, property, kind, value, text, tags,",
            "       datastream, score, performance, label, quality, max_score, inserted",
            "FROM {table} FINAL",
        ),
    ),
    # Datastreams whose storage period is NEVER: only the latest value of each is kept.
    Table(
        LATEST_TABLE,
        like=RAW_TABLE,
        engine=Engine("ReplacingMergeTree", ("created",)),
        order_by=("node_id", "source_id", "property"),
    ),
    View(
        LATEST_VIEW,
        LATEST_TABLE,
        (
            "SELECT node_id, source_id, created, property, kind, value, text, tags,",
            "       datastream, score, performance, label, quality, max_score, inserted",
            "FROM {table} FINAL",
        ),
    ),
]


# Dead letters are kept in the store as well as on the topic: the embedded broker keeps nothing
# on disk, and a refusal must outlive it like a stored row does. One row per letter id (a batch
# redelivered after a crash refuses the same input again, with the same id).
DEAD_LETTER_TABLE = "dead_letter_raw"
DEAD_LETTER_VIEW = "dead_letter"
RAW_OBJECTS += [
    Table(
        DEAD_LETTER_TABLE,
        columns=(
            ("id", "String"),
            ("at", "DateTime64(3, 'UTC')"),
            ("stage", "LowCardinality(String)"),
            ("rules", "Array(LowCardinality(String))"),
            ("topic", "String"),
            ("partition", "Int32"),
            ("offset", "Int64"),
            ("letter", "String"),
        ),
        engine=Engine("ReplacingMergeTree", ("at",)),
        partition_by="toYYYYMM(at)",
        order_by=("id",),
        # a letter has no stream: sharded by its replacing key
        shard_by=("id",),
    ),
    View(
        DEAD_LETTER_VIEW,
        DEAD_LETTER_TABLE,
        ("SELECT id, at, stage, rules, topic, partition, offset, letter FROM {table} FINAL",),
    ),
]
# The statements on one server (as the store has always been made).
SCHEMA = statements(RAW_OBJECTS)


LetterRow = tuple[str, int, str, list[str], str, int, int, bytes]

# ClickHouse's codes for "busy or away, not this data's fault", with how long to wait first:
# TIMEOUT_EXCEEDED, TOO_MANY_SIMULTANEOUS_QUERIES, MEMORY_LIMIT_EXCEEDED, TOO_MANY_PARTS (merges
# must catch up: the longest wait), NETWORK_ERROR, SOCKET_TIMEOUT, UNKNOWN_TABLE/UNKNOWN_DATABASE
# (a store being re-created), QUERY_WAS_CANCELLED, SYSTEM_ERROR, KEEPER_EXCEPTION,
# TABLE_IS_READ_ONLY and READONLY (a replica that lost Keeper).
BUSY_CODES: dict[int, float] = {
    159: 1.0,
    202: 1.0,
    241: 2.0,
    252: 5.0,
    210: 1.0,
    209: 1.0,
    60: 1.0,
    81: 1.0,
    394: 1.0,
    425: 1.0,
    999: 2.0,
    242: 5.0,
    164: 5.0,
}


def busy_for(exc: BaseException) -> float | None:
    """Seconds to wait when `exc` is ClickHouse (or the way to it) saying it cannot take a batch
    now; None when the statement or its data is at fault."""
    from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

    if isinstance(exc, OperationalError | OSError | TimeoutError | ConnectionError):
        return 1.0
    if isinstance(exc, DatabaseError):
        text = str(exc)  # clickhouse-connect puts the server's "Code: N." in the message
        for code, wait in BUSY_CODES.items():
            if f"Code: {code}." in text:
                return wait
        # an HTTP 5xx without a ClickHouse code: a proxy or the endpoint itself failing
        if "HTTPDriver" in text and "Code:" not in text:
            return 1.0
    return None


@contextlib.contextmanager
def backpressure(what: str) -> Iterator[None]:
    """Every ClickHouse sink's write runs in this: the store's "not now" becomes SinkBackpressure
    (with the wait its code calls for); any other error is raised as it is, the batch's fault."""
    try:
        yield
    except SinkBackpressure:
        raise
    except Exception as exc:
        wait = busy_for(exc)
        if wait is None:
            raise
        raise SinkBackpressure(f"{what}: {exc}", wait) from exc


def cluster_of(client: Client, name: str) -> Cluster | None:
    """Cluster mode's target (PIPELINE_CLICKHOUSE_CLUSTER and the client's database), or None on
    one server."""
    return Cluster(name, client.database or "default") if name else None


def insert_kwargs(cluster: Cluster | None, token: str | None = None) -> dict[str, Any]:
    """The keyword arguments of an insert: none on one server (the insert as it always was); on
    a cluster, the settings that make a Distributed insert synchronous and idempotent.

    `distributed_foreground_insert` (alias `insert_distributed_sync`): the INSERT returns once
    every shard has stored its rows (one replica each; internal_replication does the rest), so
    "stored" before the ack still means stored. The default, background mode queues the rows on
    the node that took the INSERT, and sends them later, in batches that merge inserts.
    https://clickhouse.com/docs/reference/settings/session-settings/distributed
    `insert_deduplication_token` (sinks/dedup.py): each shard's part of a synchronous insert is an
    INSERT of its own carrying the query's settings, so each replicated table drops a part it has
    already taken under the token.
    https://clickhouse.com/docs/reference/settings/session-settings/insert"""
    if cluster is None:
        return {}
    settings: dict[str, Any] = {"distributed_foreground_insert": 1}
    if token is not None:
        settings["insert_deduplication_token"] = token
    return {"settings": settings}


class DeadLetterSink(Sink[Sequence[LetterRow], int]):
    """Dead letters kept in ClickHouse beside the rows (`dead_letter` view), idempotent by id."""

    def __init__(self, client: Client, cluster: str = "") -> None:
        self.client = client
        self.cluster_name = cluster
        self.cluster = cluster_of(client, cluster)

    def setup(self) -> None:
        ensure_schema(self.client, self.cluster_name)

    def write(self, batch: Sequence[LetterRow]) -> int:
        """(id, at ms, stage, rules, topic, partition, offset, letter JSON) rows."""
        if batch:
            # a letter's id names what it refused and why: the same letters again are dropped
            token = batch_token([(r[4], r[5], r[6]) for r in batch], [" ".join(sorted(r[0] for r in batch)).encode()])
            with backpressure(f"dead-letter insert of {len(batch)}"):
                self.client.insert(
                    DEAD_LETTER_TABLE,
                    [[*row[:7], row[7].decode()] for row in batch],
                    column_names=["id", "at", "stage", "rules", "topic", "partition", "offset", "letter"],
                    **insert_kwargs(self.cluster, token),
                )
        return len(batch)


# The longest statement text the pipeline sends (ClickHouse's `max_query_size`, 256 KiB by
# default: https://clickhouse.com/docs/operations/settings/settings#max_query_size). The set-wise
# reads and the cascade carry their ranges in the text, and a fleet's step names tens of
# thousands of them: fewer, longer statements cost the store less (docs/hot-path.md).
QUERY_BYTES = 8 << 20


def connect(url: str, database: str | None = None, long_statements: bool = True, **kwargs: Any) -> Client:
    """A clickhouse-connect client for a URL like http://user:pw@host:8123/db. `long_statements`:
    it may send statements up to QUERY_BYTES (a reader that never does, such as the HTTP API,
    leaves the setting alone: a read-only user may not change it)."""
    parsed = urlparse(url)
    db = database or (parsed.path.strip("/") or None)
    base = f"{parsed.scheme}://{parsed.netloc}"
    settings = {**({"max_query_size": QUERY_BYTES} if long_statements else {}), **kwargs.pop("settings", {})}
    return clickhouse_connect.get_client(
        dsn=base, database=db or "default", settings=settings, compress="lz4", **kwargs
    )


def sql_ms(ms: int) -> str:
    """An epoch-millisecond instant as a DateTime64(3, 'UTC') expression."""
    return f"fromUnixTimestamp64Milli(toInt64({int(ms)}), 'UTC')"


def sql_stream(node_id: int, source_id: str) -> str:
    """The condition selecting one (node, source) stream."""
    return f"node_id = {int(node_id)} AND source_id = {sql_str(source_id)}"


@lru_cache(maxsize=1 << 14)
def _tsv_text(value: str) -> str:
    # a fleet's ranges repeat a handful of source ids thousands of times a query
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _tsv_field(value: int | str) -> str:
    if isinstance(value, str):
        return _tsv_text(value)
    return str(int(value))


def final_rows(table: str, alias: str, live: bool = False) -> tuple[str, str]:
    """What a view `SELECT … FROM table FINAL [WHERE deleted = 0]` reads, named directly: the FROM
    item, and the condition to add to the query's WHERE (`live`: without the rows marked deleted).
    The worker's own set-wise reads use it instead of the views: the engine plans a view's
    wrapping query on every statement, 8-25 ms each on the embedded endpoint (measured on the
    rollup cascade, docs/hot-path.md). The views stay, for people and Grafana;
    tests/unit/test_views_inlined.py holds them to these definitions."""
    return f"{table} AS {alias} FINAL", (f" AND {alias}.deleted = 0" if live else "")


def sql_table(shape: str, rows: Iterable[Sequence[int | str]]) -> str:
    """A table expression of literal rows (ints and strings) of the given structure, for a JOIN
    or IN: `format(TSV, ...)`, which the engine reads as input data. The same 1,000 rows as a
    VALUES(...) list cost the endpoint ~110 ms to parse, as TSV ~20 ms (issue 13)."""
    data = "\n".join("\t".join(_tsv_field(v) for v in row) for row in rows)
    return f"format(TSV, {sql_str(shape)}, {sql_str(data)})"


# One row per range a set-wise read asks for: (q, node, source, lo ms, hi ms), optionally a name.
Range = tuple[int, int, str, int, int]
NamedRange = tuple[int, int, str, str, int, int]
# Ranges per set-wise query (the table of ranges travels in the query text, well under
# QUERY_BYTES: ~50 bytes a range, up to four tables a query). A fleet's rollup step of 10,000
# streams took 0.7 of its time with 4,000 as with 1,000 in the same session: each statement
# costs its planning and a pass over `FINAL` whatever it carries (docs/hot-path.md).
RANGES_CHUNK = 4000


def ranges_join(
    alias: str,
    ranges: Sequence[Range] | Sequence[NamedRange],
    time_column: str = "created",
    name_column: str | None = None,
) -> str:
    """`INNER JOIN <ranges> AS w ON <stream> [AND name] WHERE <index prefilter> AND <in range>`:
    the rows of `alias` inside each range, each tagged with its range's `w.q` — one query for the
    ranges of many streams, where a UNION ALL of one SELECT per range cost the endpoint ~10 ms per
    range (a fleet names thousands). The prefilter (the nodes named, the overall time span) lets
    the primary key skip what no range can hold; the join then picks each range exactly. Named
    ranges carry `w.name`, matched to `name_column` if given (else the caller's to use)."""
    named = bool(ranges) and len(ranges[0]) == 6
    shape = "q UInt32, node_id UInt64, source_id String, " + ("name String, " if named else "") + "lo Int64, hi Int64"
    lo, hi = min(int(r[-2]) for r in ranges), max(int(r[-1]) for r in ranges)
    nodes = ", ".join(str(n) for n in sorted({int(r[1]) for r in ranges}))
    on = f"{alias}.node_id = w.node_id AND toString({alias}.source_id) = w.source_id"
    if name_column is not None:
        on += f" AND toString({alias}.{name_column}) = w.name"
    t = f"toUnixTimestamp64Milli({alias}.{time_column})"
    return (
        f" INNER JOIN {sql_table(shape, ranges)} AS w ON {on}"
        f" WHERE {alias}.node_id IN ({nodes}) AND {alias}.{time_column} >= {sql_ms(lo)}"
        f" AND {alias}.{time_column} < {sql_ms(hi)} AND {t} >= w.lo AND {t} < w.hi"
    )


def union_all(client: Client, parts: Sequence[str], chunk: int = 100) -> list[Sequence[Any]]:
    """The rows of many SELECTs of one shape, `chunk` of them per query."""
    rows: list[Sequence[Any]] = []
    for k in range(0, len(parts), chunk):
        rows += client.query(" UNION ALL ".join(parts[k : k + chunk])).result_rows
    return rows


def ensure_schema(client: Client, cluster: str = "") -> None:
    """Create what is missing; safe to run at every start. With a cluster name, on every host of
    the cluster (sinks/ddl.py)."""
    target = cluster_of(client, cluster)
    for ddl in statements(RAW_OBJECTS, target):
        client.command(ddl)
    if target is not None:
        require_distributed(client, target, RAW_OBJECTS)
    migrate_raw_ttl(client, cluster)


class NotClusterTables(RuntimeError):
    """Cluster mode found tables of one server under the public names."""


def require_distributed(client: Client, cluster: Cluster, objects: Sequence[SchemaObject]) -> None:
    """In cluster mode, every public table name must be a Distributed table. CREATE ... IF NOT
    EXISTS leaves a table of a single-node store in place, and inserts into it would never reach
    the cluster: say so, and stop."""
    names = [obj.name for obj in objects if isinstance(obj, Table)]
    rows = client.query(
        "SELECT name, engine FROM system.tables WHERE database = {db:String} AND name IN {names:Array(String)}",
        parameters={"db": cluster.database, "names": names},
    ).result_rows
    wrong = sorted(f"{name} ({engine})" for name, engine in rows if engine != "Distributed")
    if wrong:
        raise NotClusterTables(
            f"PIPELINE_CLICKHOUSE_CLUSTER={cluster.name}, but {', '.join(wrong)} in database {cluster.database}"
            " are not Distributed tables: a single-node store is not converted in place (docs/scale-out.md)"
        )


def _compact(sql: str) -> str:
    return "".join(sql.split())


def migrate_raw_ttl(client: Client, cluster: str = "") -> bool:
    """Give a raw table created by an older version the current TTL (RAW_TTL); True if it was
    changed. Idempotent: a table that has it already is left alone, so a start costs one query.
    The existing parts get the new TTL by a mutation, in the background and once (left with the
    old one, their rows would still go by it at the next merge). On a cluster: the local tables,
    as the host the client talks to has them, changed ON CLUSTER."""
    target = cluster_of(client, cluster)
    rows = client.query(
        "SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
        parameters={"t": storage_name(RAW_TABLE, target)},
    ).result_rows
    if not rows or _compact(f"TTL {RAW_TTL}") in _compact(str(rows[0][0])):
        return False
    client.command(alter_table(RAW_TABLE, f"MODIFY TTL {RAW_TTL}", target))
    return True


class RawSink(Sink[pa.Table | RawColumns, int]):
    """Raw sample rows (`datum_raw`, or the latest-values table), idempotent by the table's
    replacing key."""

    def __init__(self, client: Client, table: str = RAW_TABLE, cluster: str = "") -> None:
        self.client = client
        self.table = table
        self.cluster_name = cluster
        self.cluster = cluster_of(client, cluster)

    def setup(self) -> None:
        ensure_schema(self.client, self.cluster_name)  # the raw, latest and dead-letter tables and their views

    def write(
        self, batch: pa.Table | RawColumns, inserted_ms: int | None = None, origins: Sequence[Origin] = ()
    ) -> int:
        """Insert the batch as one Arrow table (the columnar path's own, or the reference's lists
        converted once: no Python loop per value, as the Native encoder of Python lists has).
        `inserted_ms` stamps every row (the batch's identity in the rollup ledger, and the
        replacing version); default: the server's clock. `origins`: the (topic, partition,
        offset) of the messages the rows come from; on a cluster they and the rows make the
        insert's deduplication token."""
        if not len(batch):
            return 0
        table = raw_arrow(batch, inserted_ms)
        if self.cluster is None:
            with backpressure(f"raw insert of {len(batch)} rows into {self.table}"):
                self.client.insert_arrow(self.table, table)
            return len(batch)
        # The rows without their `inserted` stamp, which is new at every attempt. A copy dropped
        # as a duplicate leaves the first attempt's stamp: the rollup ledger's repair (stamps
        # stored but never rolled up) covers a stamp whose marks were never sent.
        # by content, whatever the chunks (a batch's groups are chunks of their own)
        rows = table.drop_columns(["inserted"]) if inserted_ms is not None else table
        token = raw_token(rows.combine_chunks(), origins)
        with backpressure(f"raw insert of {len(batch)} rows into {self.table}"):
            self.client.insert_arrow(self.table, table, **insert_kwargs(self.cluster, token))
        return len(batch)


# a DateTime64(3, 'UTC') column as Arrow gives it (epoch ms cast without a copy)
UTC_MS = pa.timestamp("ms", tz="UTC")
# processors.columns.RAW_SCHEMA with `created` a timestamp: what the raw table takes
RAW_ARROW = RAW_SCHEMA.set(RAW_SCHEMA.get_field_index("created"), pa.field("created", UTC_MS))
assert tuple(RAW_ARROW.names) == RAW_COLUMNS


def raw_arrow(batch: pa.Table | RawColumns, inserted_ms: int | None = None) -> pa.Table:
    """The raw rows as an Arrow table of the raw table's columns (and `inserted`, if given);
    `created` epoch ms become timestamps without a copy."""
    table = batch if isinstance(batch, pa.Table) else raw_table(batch)
    arrays = [table.column(name) for name in RAW_COLUMNS]
    arrays[RAW_COLUMNS.index("created")] = arrays[RAW_COLUMNS.index("created")].cast(UTC_MS)
    schema = RAW_ARROW
    if inserted_ms is not None:
        arrays.append(pa.chunked_array([pa.array(np.full(len(table), inserted_ms, dtype=np.int64)).cast(UTC_MS)]))
        schema = schema.append(pa.field("inserted", UTC_MS))
    return pa.Table.from_arrays(arrays, schema=schema)


def raw_token(table: pa.Table, origins: Sequence[Origin]) -> str | None:
    """The deduplication token of raw rows from these messages (None without messages: rows of
    no batch, nothing to tell a retry by). Arrow's buffers are hashed as they are, without a copy
    (~10 ms for 80,000 rows)."""
    if not origins:
        return None
    buffers = (buf for col in table.columns for chunk in col.chunks for buf in chunk.buffers() if buf is not None)
    return batch_token(origins, (memoryview(buf) for buf in buffers))


def raw_retention_days(client: Client, streams: Sequence[tuple[int, str]]) -> dict[tuple[int, str], int]:
    """Per stream with raw rows: the shortest storage period (days) of its stored samples, 0 when
    none has one (kept forever). A stream absent from the answer has no raw rows at all (never
    stored, or all expired). One query per RANGES_CHUNK streams."""
    out: dict[tuple[int, str], int] = {}
    unique = sorted(set(streams))
    for k in range(0, len(unique), RANGES_CHUNK):
        pairs = sql_table("node_id UInt64, source_id String", unique[k : k + RANGES_CHUNK])
        result = client.query(
            f"SELECT node_id, toString(source_id), minIf(ttl_days, ttl_days > 0) FROM {RAW_TABLE}"
            f" WHERE (node_id, toString(source_id)) IN"
            f" (SELECT * FROM {pairs}) GROUP BY node_id, source_id"
        )
        for node, source, days in result.result_rows:
            out[(int(node), str(source))] = int(days)
    return out


def rate_baselines_many(
    client: Client, firsts: Mapping[tuple[int, str], int], chunk: int = 2000
) -> dict[tuple[int, str], list[tuple[str, int, float]]]:
    """`rate_baselines` of many streams, each before its own time, in one query per `chunk` streams
    (a fleet's first batch names thousands of streams: one query each cost ~50 ms apiece)."""
    out: dict[tuple[int, str], list[tuple[str, int, float]]] = {stream: [] for stream in firsts}
    items = sorted(firsts.items())
    for k in range(0, len(items), chunk):
        part = items[k : k + chunk]
        streams = sql_table("node_id UInt64, source_id String, before Int64", [(n, s, b) for (n, s), b in part])
        result = client.query(
            f"SELECT d.node_id, toString(d.source_id), d.datastream, toUnixTimestamp64Milli(max(d.created)),"
            f" argMax(d.value, d.created)"
            f" FROM {DATUM_VIEW} AS d INNER JOIN"
            f" {streams} AS f"
            f" ON d.node_id = f.node_id AND toString(d.source_id) = f.source_id"
            f" WHERE d.kind = 'a' AND d.datastream != '' AND d.value IS NOT NULL"
            f" AND toUnixTimestamp64Milli(d.created) < f.before"
            f" GROUP BY d.node_id, d.source_id, d.datastream"
        )
        for node, source, datastream, created, value in result.result_rows:
            out.setdefault((int(node), str(source)), []).append((str(datastream), int(created), float(value)))
    return out


def rate_baselines(client: Client, node_id: int, source_id: str, before_ms: int) -> list[tuple[str, int, float]]:
    """The newest stored accumulating value of each datastream of a stream before a time:
    where a cumulative rate picks up after a restart. (datastream, created_ms, value) rows."""
    result = client.query(
        f"SELECT datastream, toUnixTimestamp64Milli(max(created)), argMax(value, created) FROM {DATUM_VIEW}"
        " WHERE node_id = {node:UInt64} AND source_id = {source:String} AND kind = 'a'"
        " AND datastream != '' AND value IS NOT NULL"
        " AND created < fromUnixTimestamp64Milli({before:Int64}, 'UTC') GROUP BY datastream",
        parameters={"node": node_id, "source": source_id, "before": before_ms},
    )
    return [(str(r[0]), int(r[1]), float(r[2])) for r in result.result_rows]


def wait_for(url: str, timeout: float = 60.0) -> Client:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client = connect(url)
            client.command("SELECT 1")
            return client
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
