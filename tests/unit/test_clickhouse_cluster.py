"""ClickHouse cluster mode (issue 16): the statements each sink sends, recorded by a fake client.

The single-node statements are compared with clickhouse_single_node_ddl.json, recorded from the
sinks before cluster mode existed: an empty PIPELINE_CLICKHOUSE_CLUSTER must send exactly those."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from processors.auxiliary import AuxChange, AuxKey, AuxRecord
from processors.rollup import RollupRow
from processors.rows import RawColumns
from sinks.auxiliary import AuxiliarySink
from sinks.clickhouse import LATEST_TABLE, DeadLetterSink, RawSink
from sinks.rollups import RollupLedger, RollupSink, RollupWrite, not_rolled_up

SINGLE_NODE = Path(__file__).with_name("clickhouse_single_node_ddl.json")
OLD_TTL = "toDateTime(created) + toIntervalDay(ttl_days) WHERE ttl_days > 0"


class _Result:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.result_rows = rows


class Recorder:
    """A clickhouse-connect client that records what it is sent. `engine_full` answers the raw
    table's system.tables lookup (None: the table does not exist yet); `engines` answers a lookup
    of table engines by name."""

    def __init__(self, engine_full: str | None = None, engines: dict[str, str] | None = None) -> None:
        self.database = "default"
        self.engine_full = engine_full
        self.engines = engines or {}
        self.calls: list[list[Any]] = []

    def command(self, sql: str, **kwargs: Any) -> None:
        self.calls.append(["command", sql, kwargs])

    def query(self, sql: str, parameters: dict[str, Any] | None = None, **kwargs: Any) -> _Result:
        self.calls.append(["query", sql, parameters, kwargs])
        if "engine_full" in sql:
            return _Result([] if self.engine_full is None else [(self.engine_full,)])
        if "SELECT name, engine" in sql:
            return _Result(sorted(self.engines.items()))
        return _Result([])

    def insert(self, table: str, data: Any, **kwargs: Any) -> None:
        self.calls.append(["insert", table, len(data), sorted(kwargs)])

    def insert_arrow(self, table: str, arrow: Any, **kwargs: Any) -> None:
        self.calls.append(["insert_arrow", table, arrow.num_rows, sorted(kwargs)])

    def commands(self) -> list[str]:
        return [c[1] for c in self.calls if c[0] == "command"]


def setup_calls(**sink_kwargs: Any) -> dict[str, list[list[Any]]]:
    """What each sink's setup() sends: on an empty store, and on a raw table with an old TTL."""
    out: dict[str, list[list[Any]]] = {}
    for name, make, engine_full in [
        ("raw_fresh", RawSink, None),
        ("raw_old_ttl", RawSink, f"ReplacingMergeTree(inserted) ORDER BY x TTL {OLD_TTL}"),
        ("dead_letters", DeadLetterSink, None),
        ("rollups", RollupSink, None),
        ("ledger", RollupLedger, None),
        ("auxiliary", AuxiliarySink, None),
    ]:
        client = Recorder(engine_full)
        make(client, **sink_kwargs).setup()
        out[name] = client.calls
    return out


def raw_rows(n: int = 2, node: int = 1, source: str = "/a") -> RawColumns:
    return RawColumns(
        node_id=[node] * n,
        source_id=[source] * n,
        created=[1_700_000_000_000 + k for k in range(n)],
        property=["watts"] * n,
        kind=["i"] * n,
        value=[float(k) for k in range(n)],
        text=[""] * n,
        tags=[[] for _ in range(n)],
        datastream=[""] * n,
        score=[None] * n,
        performance=[None] * n,
        label=[""] * n,
        quality=[""] * n,
        max_score=[None] * n,
        ttl_days=[0] * n,
    )


def write_calls(**sink_kwargs: Any) -> list[list[Any]]:
    """What each sink's write() sends (table, rows, the keyword arguments' names), and the rollup
    repair's query."""
    client = Recorder()
    RawSink(client, **sink_kwargs).write(raw_rows(), 1_700_000_000_123)
    RawSink(client, LATEST_TABLE, **sink_kwargs).write(raw_rows(1))
    letter = ("id1", 1_700_000_000_000, "check", ["rule"], "topic", 0, 5, b"{}")
    DeadLetterSink(client, **sink_kwargs).write([letter])
    row = RollupRow("halfhour", 1, "/a", "watts", "i", 0, 1_800_000, count=1, avg=1.0, min=1.0, max=1.0)
    RollupSink(client, **sink_kwargs).write(RollupWrite([row], [row]))
    RollupLedger(client, **sink_kwargs).write([(1, "/a", 1_700_000_000_123)])
    key = AuxKey(1, "/a", "Reset", 1_700_000_000_000)
    AuxiliarySink(client, **sink_kwargs).write([AuxChange("store", AuxRecord(key, {"wh": 1.0}))])
    not_rolled_up(client, **sink_kwargs)  # the rollup repair's one join of two tables
    return client.calls


def test_single_node_statements_are_unchanged() -> None:
    recorded = json.loads(SINGLE_NODE.read_text())
    assert setup_calls() == recorded["setup"]
    assert write_calls() == recorded["write"]
