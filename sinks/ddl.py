"""ClickHouse DDL from one definition per table and view, for one server or for a cluster.

Pure (no client): sinks/clickhouse.py, rollups.py and auxiliary.py declare their tables (`Table`)
and views (`View`) once; `statements(objects, cluster)` writes the SQL.

* One server (`cluster` None): `CREATE TABLE IF NOT EXISTS <name> ... ENGINE = <Engine>(...)`,
  byte for byte the statements the sinks sent before cluster mode existed
  (tests/unit/clickhouse_single_node_ddl.json).
* A cluster (PIPELINE_CLICKHOUSE_CLUSTER): every statement `ON CLUSTER`, names qualified with the
  database. A table becomes `<name>_local` with the Replicated variant of its engine (path
  `/clickhouse/tables/{shard}/{database}/<name>_local`, replica `{replica}`: the server's macros),
  plus `<name>`, a Distributed table over it sharded by `cityHash64(<shard key>)`. The code reads
  and writes `<name>` in both modes. Views read the Distributed tables.

The database is named in every cluster statement, never left to `currentDatabase()`: a DDL worker
runs ON CLUSTER statements in its own default database, so an unqualified `AS <table>` or a
`currentDatabase()` in the Distributed engine's arguments names `default` on the other hosts
(ClickHouse issues #6104, #8170, #39500).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sinks.sql import sql_ident, sql_str

# Rows of one (node, source) stream share a shard: a stream's replacing key, FINAL, rollups and
# the rollup ledger's join with the raw table all stay on one shard.
STREAM_KEY = ("node_id", "source_id")
LOCAL_SUFFIX = "_local"
# ClickHouse's documented macros (remote_servers' host gets them from its <macros> config)
REPLICA_PATH = "/clickhouse/tables/{shard}/{database}/"
REPLICA_NAME = "{replica}"


@dataclass(frozen=True)
class Cluster:
    """Cluster mode: the cluster's name in the servers' remote_servers, and the database the
    pipeline uses (it must exist on every host)."""

    name: str
    database: str

    def on(self) -> str:
        return f" ON CLUSTER {sql_str(self.name)}"

    def qualified(self, table: str) -> str:
        return f"{sql_ident(self.database)}.{table}"


@dataclass(frozen=True)
class Engine:
    """A MergeTree-family engine and its arguments (e.g. the replacing version column)."""

    name: str
    args: tuple[str, ...] = ()

    def sql(self, replica_path: str | None = None) -> str:
        """`Name(args)`; with a replica path, the Replicated variant with its path and replica
        name before the engine's own arguments."""
        if replica_path is None:
            return f"{self.name}({', '.join(self.args)})"
        args = [sql_str(replica_path), sql_str(REPLICA_NAME), *self.args]
        return f"Replicated{self.name}({', '.join(args)})"


@dataclass(frozen=True)
class Table:
    """One table: its columns (or `like`: another table's), engine and clauses. `comment` lines
    go into the statement (they explain the engine to whoever reads SHOW CREATE). `shard_by`:
    the columns of the Distributed table's sharding key, a subset of the replacing key (ORDER BY),
    so that the rows one key replaces are always on one shard."""

    name: str
    engine: Engine
    order_by: tuple[str, ...]
    columns: tuple[tuple[str, str], ...] = ()
    like: str | None = None
    partition_by: str | None = None
    ttl: str | None = None
    comment: tuple[str, ...] = ()
    shard_by: tuple[str, ...] = STREAM_KEY

    @property
    def local(self) -> str:
        return self.name + LOCAL_SUFFIX

    def shard_key(self) -> str:
        return f"cityHash64({', '.join(self.shard_by)})"


@dataclass(frozen=True)
class View:
    """One view over one table: `select` lines, `{table}` where the table's name goes."""

    name: str
    table: str
    select: tuple[str, ...]


SchemaObject = Table | View


def _statement(head: str, lines: Sequence[str]) -> str:
    # the layout the statements have always had: each line indented by four, then a blank line's indent
    return f"\n    {head}\n" + "".join(f"    {line}\n" for line in lines) + "    "


def _columns(columns: Sequence[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in columns) + 1
    return ",\n".join(f"        {name.ljust(width)}{kind}" for name, kind in columns)


def _order_by(keys: Sequence[str]) -> str:
    return keys[0] if len(keys) == 1 else f"({', '.join(keys)})"


def create_table(table: Table, name: str, engine: str, on: str = "", like: str | None = None) -> str:
    """CREATE TABLE of `table`'s columns (or `like`'s) and clauses as `name` with `engine`."""
    head = f"CREATE TABLE IF NOT EXISTS {name}{on}"
    if like is not None:
        head += f" AS {like}"
    else:
        head += f" (\n{_columns(table.columns)}\n    )"
    lines = [*(f"-- {c}" for c in table.comment), f"ENGINE = {engine}"]
    if table.partition_by:
        lines.append(f"PARTITION BY {table.partition_by}")
    lines.append(f"ORDER BY {_order_by(table.order_by)}")
    if table.ttl:
        lines.append(f"TTL {table.ttl}")
    return _statement(head, lines)


def table_statements(table: Table, cluster: Cluster | None = None) -> list[str]:
    """One CREATE on one server; on a cluster the replicated local table, then the Distributed
    table under the table's own name."""
    if cluster is None:
        return [create_table(table, table.name, table.engine.sql(), like=table.like)]
    local = cluster.qualified(table.local)
    like = cluster.qualified(table.like + LOCAL_SUFFIX) if table.like else None
    replicated = create_table(table, local, table.engine.sql(REPLICA_PATH + table.local), cluster.on(), like)
    distributed = _statement(
        f"CREATE TABLE IF NOT EXISTS {cluster.qualified(table.name)}{cluster.on()} AS {local}",
        [
            f"ENGINE = Distributed({sql_str(cluster.name)}, {sql_str(cluster.database)}, {sql_str(table.local)},"
            f" {table.shard_key()})"
        ],
    )
    return [replicated, distributed]


def view_statement(view: View, cluster: Cluster | None = None) -> str:
    """CREATE VIEW; on a cluster ON CLUSTER, reading the Distributed table. FINAL on a
    Distributed table is applied by each shard to its own rows: correct, since the sharding key
    keeps every row of one replacing key on one shard (`Table.shard_by`)."""
    name, table, on = view.name, view.table, ""
    if cluster is not None:
        name, table, on = cluster.qualified(view.name), cluster.qualified(view.table), cluster.on()
    return _statement(f"CREATE VIEW IF NOT EXISTS {name}{on} AS", [s.replace("{table}", table) for s in view.select])


def statements(objects: Sequence[SchemaObject], cluster: Cluster | None = None) -> list[str]:
    """Every CREATE of `objects`, in order (a table before what is made from it)."""
    out: list[str] = []
    for obj in objects:
        if isinstance(obj, Table):
            out += table_statements(obj, cluster)
        else:
            out.append(view_statement(obj, cluster))
    return out


def storage_name(table: str, cluster: Cluster | None = None) -> str:
    """The table that holds the rows (what system.tables and ALTER name): the table itself on one
    server, its local table on a cluster."""
    return table if cluster is None else table + LOCAL_SUFFIX


def alter_table(table: str, change: str, cluster: Cluster | None = None) -> str:
    """ALTER of the table holding the rows: on a cluster, of the local tables, ON CLUSTER (each
    shard's replicas then share it through Keeper)."""
    if cluster is None:
        return f"ALTER TABLE {table} {change}"
    return f"ALTER TABLE {cluster.qualified(storage_name(table, cluster))}{cluster.on()} {change}"
