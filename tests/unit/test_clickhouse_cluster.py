"""ClickHouse cluster mode (issue 16): the statements each sink sends, recorded by a fake client.

The single-node statements are compared with clickhouse_single_node_ddl.json, recorded from the
sinks before cluster mode existed: an empty PIPELINE_CLICKHOUSE_CLUSTER must send exactly those.
No ClickHouse cluster runs here: the cluster statements are checked by structure, and every
statement of both modes by ClickHouse's own parser (chDB's formatQuery)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.auxiliary import AuxChange, AuxKey, AuxRecord
from processors.rollup import PERIODICITIES, RollupRow
from processors.rows import RawColumns
from sinks.auxiliary import AUX_OBJECTS, AuxiliarySink
from sinks.clickhouse import LATEST_TABLE, RAW_OBJECTS, RAW_TABLE, RAW_TTL, DeadLetterSink, NotClusterTables, RawSink
from sinks.ddl import STREAM_KEY, Cluster, Table, View, statements
from sinks.dedup import batch_token, offset_runs
from sinks.rollups import ROLLUP_OBJECTS, RollupLedger, RollupSink, RollupWrite, cascade_sql, not_rolled_up

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
        self.inserts: list[tuple[str, dict[str, Any] | None]] = []  # (table, settings) of each insert

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
        self.inserts.append((table, kwargs.get("settings")))

    def insert_arrow(self, table: str, arrow: Any, **kwargs: Any) -> None:
        self.calls.append(["insert_arrow", table, arrow.num_rows, sorted(kwargs)])
        self.inserts.append((table, kwargs.get("settings")))

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


# -- cluster mode ---------------------------------------------------------------------------------

CLUSTER = "telemetry"
ON = f" ON CLUSTER '{CLUSTER}'"
OBJECTS = [*RAW_OBJECTS, *ROLLUP_OBJECTS, *AUX_OBJECTS]
TABLES = [o for o in OBJECTS if isinstance(o, Table)]
VIEWS = [o for o in OBJECTS if isinstance(o, View)]
TARGET = Cluster(CLUSTER, "default")


def cluster_statements() -> list[str]:
    """Every statement the sinks' setup() sends in cluster mode to a fresh store, in order, once each."""
    made = setup_calls(cluster=CLUSTER)
    del made["raw_old_ttl"]
    return list(dict.fromkeys(c[1] for calls in made.values() for c in calls if c[0] == "command"))


def engine_of(statement: str) -> tuple[str, list[str]]:
    """(engine, its arguments) of a CREATE TABLE."""
    m = re.search(r"^\s*ENGINE = (\w+)\((.*)\)\s*$", statement, re.M)
    assert m, statement
    return m.group(1), [a.strip() for a in re.split(r",\s*(?![^()]*\))", m.group(2))]


def created(statement: str) -> str:
    m = re.match(r"\s*CREATE (?:TABLE|VIEW) IF NOT EXISTS `default`\.(\w+) ON CLUSTER 'telemetry'", statement)
    assert m, f"not a CREATE ... ON CLUSTER of a qualified name: {statement}"
    return m.group(1)


def test_every_object_of_every_sink_is_created_on_the_cluster() -> None:
    made = cluster_statements()
    assert all(s.lstrip().startswith("CREATE ") for s in made)  # a fresh store: no ALTER
    names = [created(s) for s in made]
    assert sorted(names) == sorted([t.name for t in TABLES] + [t.local for t in TABLES] + [v.name for v in VIEWS])
    # a local table before the Distributed table over it, a table before the views that read it
    for t in TABLES:
        assert names.index(t.local) < names.index(t.name)
        if t.like:
            assert names.index(t.like + "_local") < names.index(t.local)
    for v in VIEWS:
        assert names.index(v.table) < names.index(v.name)


def test_every_local_table_is_replicated_with_its_version_column() -> None:
    made = {created(s): s for s in cluster_statements()}
    for t in TABLES:
        engine, args = engine_of(made[t.local])
        assert engine == "Replicated" + t.engine.name, made[t.local]
        assert t.engine.name.endswith("MergeTree")
        # ClickHouse's documented macros: one Keeper path per shard and table, one replica name per host
        assert args[:2] == [f"'/clickhouse/tables/{{shard}}/{{database}}/{t.local}'", "'{replica}'"]
        assert args[2:] == list(t.engine.args) and args[2:], "the replacing version column is kept"
        # otherwise the one-server statement: the same columns (or the same `AS`), clauses and comments
        single = statements([t])[0]
        head = f"CREATE TABLE IF NOT EXISTS {t.name}"
        expected = single.replace(head, f"CREATE TABLE IF NOT EXISTS `default`.{t.local}{ON}")
        expected = expected.replace(f" AS {t.like}\n", f" AS `default`.{t.like}_local\n")
        expected = expected.replace(f"ENGINE = {t.engine.sql()}", f"ENGINE = {engine}({', '.join(args)})")
        assert made[t.local] == expected


def test_every_public_table_is_distributed_over_its_local_table_by_stream() -> None:
    made = {created(s): s for s in cluster_statements()}
    for t in TABLES:
        statement = made[t.name]
        assert f"{ON} AS `default`.{t.local}\n" in statement
        engine, args = engine_of(statement)
        assert engine == "Distributed"
        assert args[:3] == [f"'{CLUSTER}'", "'default'", f"'{t.local}'"]
        if t.name == "dead_letter_raw":  # a letter has no stream: sharded by its id (its replacing key)
            assert args[3] == "cityHash64(id)"
        else:
            assert args[3] == "cityHash64(node_id, source_id)", t.name


def test_a_replacing_key_never_spans_shards() -> None:
    """Rows one key replaces have the same sharding columns, so FINAL (per shard) is exact and one
    stream's rows, rollups and ledger entries share a shard."""
    for t in TABLES:
        assert set(t.shard_by) <= set(t.order_by), t.name
        if "node_id" in t.order_by:
            assert t.shard_by == STREAM_KEY, t.name
            # the stream leads the key: one stream's rows are one range of the primary index
            # (the rollups lead with their level, then the stream)
            start = 1 if t.order_by[0] == "periodicity" else 0
            assert t.order_by[start : start + 2] == STREAM_KEY, t.name
    # the latest table has the raw table's columns
    assert any(t.like == RAW_TABLE for t in TABLES)


def test_every_view_reads_distributed_tables_on_the_cluster() -> None:
    made = {created(s): s for s in cluster_statements()}
    public = {t.name for t in TABLES}
    for v in VIEWS:
        read = re.findall(r"\bFROM `default`\.(\w+) FINAL\b", made[v.name])
        assert read == [v.table] and v.table in public, made[v.name]
        assert "_local" not in made[v.name]
        # the view's query is the one-server view's, on the qualified name
        assert made[v.name].split(" AS\n", 1)[1] == statements([v])[0].split(" AS\n", 1)[1].replace(
            f"FROM {v.table} ", f"FROM `default`.{v.table} "
        )


def test_the_raw_ttl_migration_alters_the_local_tables_on_the_cluster() -> None:
    calls = setup_calls(cluster=CLUSTER)
    (lookup,) = [c for c in calls["raw_old_ttl"] if c[0] == "query" and "engine_full" in c[1]]
    assert lookup[2] == {"t": "datum_raw_local"}
    alters = [c[1] for c in calls["raw_old_ttl"] if c[0] == "command" and c[1].startswith("ALTER")]
    assert alters == [f"ALTER TABLE `default`.datum_raw_local{ON} MODIFY TTL {RAW_TTL}"]
    assert not [c for c in calls["raw_fresh"] if c[0] == "command" and c[1].startswith("ALTER")]


def test_a_single_node_store_is_refused_in_cluster_mode() -> None:
    client = Recorder(engines={"datum_raw": "ReplacingMergeTree", "datum_latest_raw": "Distributed"})
    with pytest.raises(NotClusterTables, match=r"datum_raw \(ReplacingMergeTree\)"):
        RawSink(client, cluster=CLUSTER).setup()
    RawSink(Recorder(engines={"datum_raw": "Distributed"}), cluster=CLUSTER).setup()


def test_cluster_inserts_are_synchronous_and_carry_tokens_where_a_batch_has_an_identity() -> None:
    client = Recorder()
    write_calls(cluster=CLUSTER)  # every sink takes the cluster name
    origins = [("datums.a", 0, 10), ("datums.a", 0, 11), ("datums.b", 3, 7)]
    raw = RawSink(client, cluster=CLUSTER)
    raw.write(raw_rows(), 1_000, origins)
    raw.write(raw_rows(), 2_000, list(reversed(origins)))  # another attempt: another stamp, same rows
    raw.write(raw_rows(), 3_000, origins[:2])  # other messages
    raw.write(raw_rows(3), 4_000, origins)  # other rows from the same messages
    raw.write(raw_rows(), 5_000)  # rows of no batch
    settings = [s for _t, s in client.inserts]
    assert all(s is not None and s["distributed_foreground_insert"] == 1 for s in settings)
    tokens = [s.get("insert_deduplication_token") for s in settings if s is not None]
    assert tokens[0] == tokens[1] and len(set(tokens[:4])) == 3 and tokens[4] is None
    assert re.fullmatch(r"[0-9a-f]{64}", tokens[0] or "")

    client = Recorder()
    RollupLedger(client, cluster=CLUSTER).write([(1, "/a", 5), (2, "/b", 6)])
    RollupLedger(client, cluster=CLUSTER).write([(2, "/b", 6), (1, "/a", 5), (1, "/a", 5)])
    letter = ("id1", 1, "check", ["rule"], "datums.a", 0, 5, b"{}")
    DeadLetterSink(client, cluster=CLUSTER).write([letter])
    DeadLetterSink(client, cluster=CLUSTER).write([(*letter[:1], 2, *letter[2:])])
    row = RollupRow("halfhour", 1, "/a", "watts", "i", 0, 1_800_000, count=1)
    RollupSink(client, cluster=CLUSTER).write(RollupWrite([row]))
    key = AuxKey(1, "/a", "Reset", 0)
    AuxiliarySink(client, cluster=CLUSTER).write([AuxChange("delete", removed=key)])
    by_table = [(t, (s or {}).get("insert_deduplication_token")) for t, s in client.inserts]
    assert by_table[0][1] is not None and by_table[0] == by_table[1]  # the same ledger entries
    assert by_table[2][1] is not None and by_table[2] == by_table[3]  # the same letter ids (another time)
    # recomputed figures and new versions: the newest must win, no token
    assert by_table[4:] == [("rollup_raw", None), ("datum_auxiliary_raw", None)]
    assert all((s or {}).get("distributed_foreground_insert") == 1 for _t, s in client.inserts)

    # the cascade in the store (a step with many buckets): one INSERT … SELECT per stage (week and
    # month, both from days, together), as synchronous as any insert
    client = Recorder()
    levels = {per: [(1, "/a", 0, 3_600_000)] for per in PERIODICITIES[1:]}
    RollupSink(client, cluster=CLUSTER, combine_buckets=0).write(RollupWrite([row], [], levels))
    cascades = [c for c in client.calls if c[0] == "command"]
    stages = [re.findall(r"SELECT '(\w+)', g_node", c[1]) for c in cascades]
    assert stages == [["hour"], ["day"], ["week", "month"], ["year"]]
    assert all(c[2] == {"settings": {"distributed_foreground_insert": 1}} for c in cascades)


def test_the_rollup_repair_joins_shard_by_shard_on_a_cluster() -> None:
    client = Recorder()
    not_rolled_up(client, cluster=CLUSTER)
    (query,) = [c for c in client.calls if c[0] == "query"]
    assert query[3] == {"settings": {"distributed_product_mode": "local"}}


@pytest.mark.skipif(importlib.util.find_spec("chdb") is None, reason="chdb not installed")
def test_clickhouse_parses_every_statement_of_both_modes() -> None:
    """ClickHouse's parser (chDB's formatQuery) takes every statement, ON CLUSTER included; what it
    cannot say here: whether a cluster of servers runs them (no Docker here; compose/README.md)."""
    single = statements(OBJECTS)
    cluster = statements(OBJECTS, TARGET)
    alters = [c[1] for c in setup_calls(cluster=CLUSTER)["raw_old_ttl"] if c[1].startswith("ALTER")]
    cascades = [cascade_sql(per, [(0, 1, "/a", 0, 3_600_000)]) for per in PERIODICITIES[1:]]
    texts = [*single, *cluster, *alters]
    code = (
        "import chdb, json, sys\n"
        "from sinks.sql import sql_str\n"
        "out = [chdb.query('SELECT formatQuerySingleLine(' + sql_str(q) + ')', 'TSVRaw').bytes().decode().strip()"
        " for q in json.load(sys.stdin)]\n"
        "json.dump(out, sys.stdout)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(texts + cascades), capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    formatted = json.loads(run.stdout)
    assert len(formatted) == len(texts) + len(cascades)
    # the cascade (the same statement in both modes) inserts into the table the mode makes public
    assert all(out.startswith("INSERT INTO rollup_raw") for out in formatted[len(texts) :])
    formatted = formatted[: len(texts)]
    for text, out in zip(texts[len(single) :], formatted[len(single) :], strict=True):
        assert " ON CLUSTER telemetry " in out, (text, out)
    for out in formatted[: len(single)]:
        assert "ON CLUSTER" not in out and "Replicated" not in out and "Distributed" not in out


# -- deduplication tokens -------------------------------------------------------------------------

offsets = st.sets(st.tuples(st.sampled_from(["t.a", "t.b"]), st.integers(0, 2), st.integers(0, 40)), min_size=1)


def runs_back(text: str) -> set[tuple[str, int, int]]:
    out: set[tuple[str, int, int]] = set()
    for line in text.splitlines():
        topic, partition, span = line.rsplit(":", 2)
        lo, hi = span.split("-")
        out |= {(topic, int(partition), o) for o in range(int(lo), int(hi) + 1)}
    return out


@given(offsets, st.randoms())
def test_offset_runs_name_exactly_the_messages(messages: set[tuple[str, int, int]], rnd: Any) -> None:
    shuffled = [*messages, *rnd.sample(sorted(messages), min(3, len(messages)))]  # any order, repeats
    rnd.shuffle(shuffled)
    text = offset_runs(shuffled)
    assert text == offset_runs(sorted(messages))
    assert runs_back(text) == messages
    # one run per stretch of consecutive offsets of a partition
    lines = text.splitlines()
    assert len(lines) == len({(t, p, o) for t, p, o in messages if (t, p, o - 1) not in messages})
    assert lines == sorted(lines, key=lambda x: (x.rsplit(":", 2)[0], int(x.rsplit(":", 2)[1]), int(x.split("-")[-1])))


@given(offsets, offsets, st.binary(max_size=20), st.binary(max_size=20))
def test_tokens_are_deterministic_and_tell_batches_apart(
    a: set[tuple[str, int, int]], b: set[tuple[str, int, int]], rows_a: bytes, rows_b: bytes
) -> None:
    assert batch_token(sorted(a), [rows_a]) == batch_token(list(reversed(sorted(a))), [rows_a])
    assert (batch_token(a, [rows_a]) == batch_token(b, [rows_a])) == (a == b)
    assert (batch_token(a, [rows_a]) == batch_token(a, [rows_b])) == (rows_a == rows_b)
    # the rows' chunking is part of the identity: b"ab" is not b"a" + b"b"
    assert batch_token(a, [b"ab"]) != batch_token(a, [b"a", b"b"])


def test_raw_tokens_are_the_same_for_the_same_rows_built_again() -> None:
    """Arrow tables built twice from equal rows (nulls included) hash alike: a retry's token."""
    from sinks.clickhouse import raw_arrow, raw_token

    rows = raw_rows(5)
    rows.score[2] = 0.5
    origins = [("t", 0, 1)]
    one = raw_token(raw_arrow(rows, 1).drop_columns(["inserted"]), origins)
    two = raw_token(raw_arrow(rows, 2).drop_columns(["inserted"]), origins)
    assert one == two is not None
    rows.score[3] = 0.5
    assert raw_token(raw_arrow(rows, 1).drop_columns(["inserted"]), origins) != one


# -- the worker -----------------------------------------------------------------------------------


def test_the_worker_sets_every_sink_up_on_the_cluster_and_tokens_each_batch_by_its_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    from types import SimpleNamespace

    import pipeline.worker.app as worker_app
    from pipeline.wire.codec import CURRENT, SCHEMA_HEADER, encode_batch
    from pipeline.worker.batch import Part
    from processors.datum import Datum
    from tests.unit.worker_fakes import TOPIC, make_worker

    clients: list[Recorder] = []

    def connect(_url: str) -> Recorder:
        clients.append(Recorder(engines={"datum_raw": "Distributed"}))
        return clients[-1]

    monkeypatch.setattr(worker_app, "connect", connect)
    w = make_worker(tmp_path, monkeypatch, clickhouse_url="http://ch:8123", clickhouse_cluster=CLUSTER)
    w.setup_stores()
    assert all(f" ON CLUSTER '{CLUSTER}'" in s for c in clients for s in c.commands())
    sinks = [w.sink, w.latest_sink, w._letters, w._ledger, w.rollups.sink, w._aux_sink]
    assert [getattr(s, "cluster", None) for s in sinks] == [TARGET] * len(sinks)

    async def nothing(_marks: Any) -> None:
        return None

    monkeypatch.setattr(w, "mark_stale", nothing)

    def part(offset: int, value: float) -> Part:
        datum = Datum(1, "/room/a", 1_700_000_000_000, {"watts": value}, {}, {}, ())
        msg = SimpleNamespace(
            topic=TOPIC,
            partition=2,
            offset=offset,
            value=encode_batch([datum]),
            key=b"",
            headers=[(SCHEMA_HEADER, CURRENT.encode())],
        )
        return Part(msg)

    raw = w.sink.client
    assert isinstance(raw, Recorder)
    for batch in ([part(7, 1.0), part(8, 2.0)], [part(7, 1.0), part(8, 2.0)], [part(7, 1.0)], [part(7, 1.5)]):
        asyncio.run(w.write_datums(batch))
    tokens = [s["insert_deduplication_token"] for t, s in raw.inserts if t == RAW_TABLE and s is not None]
    # the same messages and rows again (another stamp): the same token; other messages or rows: another
    assert len(tokens) == 4 and tokens[0] == tokens[1] and len(set(tokens)) == 3
