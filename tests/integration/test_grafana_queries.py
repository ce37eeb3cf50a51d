"""Every ClickHouse query of the provisioned Grafana dashboards (compose/grafana/dashboards) runs
against a pipeline loaded with simulated data and returns rows.

The pipeline: the sample datamodels published (`pipeline metadata datamodels`), a few hours of a
small fleet from `pipeline simulate`, one worker until the datums and their rollups are stored.
Then, for each dashboard as Grafana would run it: its default time range; the query variables
resolved in order from their own queries (the first value, as Grafana picks on load, or every
value for the variables in ITERATE); custom variables over all their values (periodicity: raw and
every rollup level); template variables filled in the way Grafana formats them; the ClickHouse
plugin's macros expanded as its backend does (pkg/macros/macros.go of grafana/clickhouse-datasource).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import clickhouse_connect
import psycopg
import pytest

from pipeline.settings import Settings
from sinks.clickhouse import connect
from tests.integration.helpers import ROOT, settings_for, wait_for, wait_for_catalog, worker_process

pytestmark = pytest.mark.integration

DASHBOARD_DIR = ROOT / "compose" / "grafana" / "dashboards"
CLICKHOUSE_PLUGIN = "grafana-clickhouse-datasource"
# Query variables whose every value is tried (their panels differ by kind of data); the others
# take their first value.
ITERATE = {"property", "datastream"}
SIMULATE = ["--nodes", "2", "--interval", "60", "--backfill", "3", "--seed", "8"]
PERIODICITIES = {"halfhour", "hour", "day", "week", "month", "year"}
DATUMS = "SELECT count(DISTINCT node_id, source_id, created) FROM datum"


# ---------------------------------------------------------------------------------------------
# Grafana's side: time range, interval, template variables, the plugin's macros


@dataclass(frozen=True)
class TimeRange:
    from_ms: int
    to_ms: int

    @classmethod
    def relative(cls, expr: str, now_ms: int) -> TimeRange:
        """'now-24h' → [now - 24 h, now]."""
        m = re.fullmatch(r"now-(\d+)([smhdw])", expr)
        assert m, f"time range {expr!r} not understood by this test"
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        return cls(now_ms - int(m.group(1)) * unit * 1000, now_ms)

    def interval_ms(self, max_data_points: int = 1000) -> int:
        """Grafana's interval: the range over the data points, rounded (rangeutil.roundInterval)."""
        raw = (self.to_ms - self.from_ms) / max_data_points
        steps = [
            (1_500, 1_000),
            (3_500, 2_000),
            (7_500, 5_000),
            (12_500, 10_000),
            (17_500, 15_000),
            (25_000, 20_000),
            (45_000, 30_000),
            (90_000, 60_000),
            (210_000, 120_000),
            (450_000, 300_000),
            (750_000, 600_000),
            (1_050_000, 900_000),
            (1_500_000, 1_200_000),
            (2_700_000, 1_800_000),
            (5_400_000, 3_600_000),
            (9_000_000, 7_200_000),
            (16_200_000, 10_800_000),
            (32_400_000, 21_600_000),
            (86_400_000, 43_200_000),
            (604_800_000, 86_400_000),
        ]
        return next((value for bound, value in steps if raw < bound), 604_800_000)


def format_value(value: str, fmt: str | None) -> str:
    """A single value the way Grafana's template service formats it."""
    if fmt in (None, "raw", "text", "csv", "pipe", "glob"):
        return value
    if fmt == "sqlstring":
        return "'" + value.replace("'", "''") + "'"
    if fmt == "singlequote":
        return "'" + value.replace("'", "\\'") + "'"
    if fmt == "doublequote":
        return '"' + value.replace('"', '\\"') + '"'
    raise AssertionError(f"variable format {fmt!r} not handled by this test")


_VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?::([^}]+))?\}")


def interpolate(sql: str, values: dict[str, str]) -> str:
    """Grafana's templateSrv.replace: $name, [[name]], ${name}, ${name:format}; names Grafana does
    not know (the plugin's $__macros) stay as they are."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(5)
        if name.startswith("__"):
            return m.group(0)
        assert name in values, f"variable ${name} is not defined (or not resolved yet)"
        return format_value(values[name], fmt)

    return _VARIABLE.sub(sub, sql)


def _args(text: str, start: int) -> tuple[list[str], int]:
    """The comma-separated arguments of a macro call whose '(' is at start; nested parentheses kept."""
    depth, args, current = 0, [], ""
    for k in range(start, len(text)):
        c = text[k]
        if c == "(":
            depth += 1
            if depth == 1:
                continue
        elif c == ")":
            depth -= 1
            if depth == 0:
                args.append(current.strip())
                return [a for a in args if a], k + 1
        elif c == "," and depth == 1:
            args.append(current.strip())
            current = ""
            continue
        current += c
    raise AssertionError(f"unbalanced parentheses in macro call: {text[start : start + 80]!r}")


def expand_macros(sql: str, tr: TimeRange, interval_ms: int) -> str:
    """The ClickHouse plugin's macros (grafana/clickhouse-datasource pkg/macros/macros.go)."""
    fr, to = tr.from_ms // 1000, tr.to_ms // 1000
    seconds = max(interval_ms // 1000, 1)

    def one(column: list[str], name: str) -> str:
        assert len(column) == 1, f"$__{name} takes one argument, got {column}"
        return column[0]

    def date(ms: int) -> str:
        return f"toDate('{time.strftime('%Y-%m-%d', time.gmtime(ms / 1000))}')"

    macros: dict[str, Callable[[list[str]], str]] = {
        "fromTime": lambda a: f"toDateTime({fr})",
        "toTime": lambda a: f"toDateTime({to})",
        "fromTime_ms": lambda a: f"fromUnixTimestamp64Milli({tr.from_ms})",
        "toTime_ms": lambda a: f"fromUnixTimestamp64Milli({tr.to_ms})",
        "timeFilter": lambda a: f"{one(a, 'timeFilter')} >= toDateTime({fr}) AND {a[0]} <= toDateTime({to})",
        "timeFilter_ms": lambda a: (
            f"{one(a, 'timeFilter_ms')} >= fromUnixTimestamp64Milli({tr.from_ms}) "
            f"AND {a[0]} <= fromUnixTimestamp64Milli({tr.to_ms})"
        ),
        "dateFilter": lambda a: f"{one(a, 'dateFilter')} >= {date(tr.from_ms)} AND {a[0]} <= {date(tr.to_ms)}",
        "timeInterval": lambda a: f"toStartOfInterval(toDateTime({one(a, 'timeInterval')}), INTERVAL {seconds} second)",
        "timeInterval_ms": lambda a: (
            f"toStartOfInterval(toDateTime64({one(a, 'timeInterval_ms')}, 3), "
            f"INTERVAL {max(interval_ms, 1)} millisecond)"
        ),
        "interval_s": lambda a: str(seconds),
    }
    out, pos = [], 0
    for m in re.finditer(r"\$__(\w+)", sql):
        if m.start() < pos:
            continue
        name = m.group(1)
        assert name in macros, f"$__{name} is not a macro of the ClickHouse plugin"
        args: list[str] = []
        end = m.end()
        if end < len(sql) and sql[end] == "(":
            args, end = _args(sql, end)
        out.append(sql[pos : m.start()])
        out.append(macros[name](args))
        pos = end
    out.append(sql[pos:])
    return "".join(out)


def test_expansion_matches_the_plugin() -> None:
    tr = TimeRange(1_700_000_000_000, 1_700_086_400_000)
    sql = (
        "SELECT $__timeInterval(created) AS t FROM datum WHERE $__timeFilter(created) AND node_id = $node "
        "AND source_id = ${source:sqlstring} AND ts_end > $__fromTime AND ts_start <= $__toTime "
        "AND x = $__interval_s AND '$periodicity' = 'raw' AND $__timeFilter_ms(toDateTime64(c, 3))"
    )
    got = expand_macros(
        interpolate(sql, {"node": "7", "source": "/S1/it's", "periodicity": "day"}), tr, tr.interval_ms()
    )
    assert got == (
        "SELECT toStartOfInterval(toDateTime(created), INTERVAL 60 second) AS t FROM datum WHERE "
        "created >= toDateTime(1700000000) AND created <= toDateTime(1700086400) AND node_id = 7 "
        "AND source_id = '/S1/it''s' AND ts_end > toDateTime(1700000000) AND ts_start <= toDateTime(1700086400) "
        "AND x = 60 AND 'day' = 'raw' AND toDateTime64(c, 3) >= fromUnixTimestamp64Milli(1700000000000) "
        "AND toDateTime64(c, 3) <= fromUnixTimestamp64Milli(1700086400000)"
    )
    with pytest.raises(AssertionError, match="not a macro"):
        expand_macros("SELECT $__timeFrom()", tr, 60_000)
    with pytest.raises(AssertionError, match="not defined"):
        interpolate("SELECT $nope", {})


# ---------------------------------------------------------------------------------------------
# The dashboards' ClickHouse queries


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    sql: str


def load_dashboards() -> dict[str, dict[str, Any]]:
    files = sorted(DASHBOARD_DIR.glob("*.json"))
    assert files, f"no dashboards in {DASHBOARD_DIR}"
    return {f.name: json.loads(f.read_text()) for f in files}


def clickhouse_panels(dash: dict[str, Any]) -> list[Query]:
    out = []
    for p in dash.get("panels", []):
        for inner in [p, *p.get("panels", [])]:
            for t in inner.get("targets", []):
                ds = t.get("datasource") or inner.get("datasource") or {}
                if ds.get("type") == CLICKHOUSE_PLUGIN:
                    assert t.get("rawSql"), f"{dash['title']} / {inner.get('title')}: a target without rawSql"
                    out.append(Query(dash["title"], f"{inner.get('title')} [{t.get('refId')}]", t["rawSql"]))
    return out


def variable_sql(var: dict[str, Any]) -> str:
    q = var.get("query")
    return q if isinstance(q, str) else (q or {}).get("rawSql", "")


def run(client: Any, sql: str) -> list[tuple[Any, ...]]:
    return list(client.query(sql).result_rows)


def assignments(client: Any, dash: dict[str, Any], tr: TimeRange, interval_ms: int) -> Iterator[dict[str, str]]:
    """Every combination of variable values this test tries, each resolved in the dashboard's order."""
    variables = dash.get("templating", {}).get("list", [])

    def resolve(k: int, values: dict[str, str]) -> Iterator[dict[str, str]]:
        if k == len(variables):
            yield dict(values)
            return
        var = variables[k]
        name = var["name"]
        if var["type"] == "custom":
            options = [o.strip() for o in var["query"].split(",")]
        elif var["type"] == "query" and var.get("datasource", {}).get("type") == CLICKHOUSE_PLUGIN:
            sql = expand_macros(interpolate(variable_sql(var), values), tr, interval_ms)
            try:
                rows = run(client, sql)
            except Exception as exc:
                raise AssertionError(f"{dash['title']}: variable {name!r} query fails: {exc}\n{sql}") from None
            options = [str(r[0]) for r in rows]
            assert options, f"{dash['title']}: variable {name!r} has no values\n{sql}"
            if name not in ITERATE:
                options = options[:1]
        else:
            raise AssertionError(f"{dash['title']}: variable {name!r} of type {var['type']} not handled")
        for option in options:
            yield from resolve(k + 1, {**values, name: option})

    yield from resolve(0, {})


def clickhouse_dashboards() -> list[str]:
    return [name for name, dash in load_dashboards().items() if clickhouse_panels(dash)]


# ---------------------------------------------------------------------------------------------
# A pipeline with demo data (module scope: the three dashboards share it)


def cli(settings: Settings, *args: str, timeout: float = 180) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        env={**os.environ, **settings.as_env()},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"pipeline {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def demo(
    kafka_bootstrap: str, clickhouse_url: str, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    unique = uuid.uuid4().hex[:12]
    database = f"t_{unique}"
    admin = clickhouse_connect.get_client(dsn=clickhouse_url)
    admin.command(f"CREATE DATABASE {database}")
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    tmp = tmp_path_factory.mktemp("grafana")
    settings = settings_for(kafka_bootstrap, clickhouse_url, database, f"t{unique}.")._with(
        {"postgres_dsn": f"{postgres_url.rpartition('/')[0]}/{database}", "data_dir": tmp / "data"}
    )
    try:
        t0 = time.monotonic()
        out = cli(
            settings,
            "metadata",
            "datamodels",
            str(ROOT / "schemas" / "datamodels"),
            "--author",
            "test",
            "--comment",
            "grafana queries",
        )
        events = re.search(r"published (\d+) metadata event", out)
        assert events, out
        client = connect(settings.clickhouse_url)
        with worker_process(settings, tmp / "worker.log") as worker:

            def running(check: Callable[[], bool]) -> Callable[[], bool]:
                def probe() -> bool:
                    assert worker.poll() is None, (tmp / "worker.log").read_text()[-3000:]
                    return check()

                return probe

            # the datamodels first, so that every datum is validated and scored
            wait_for_catalog(settings.postgres_dsn, int(events.group(1)), tmp / "worker.log")
            out = cli(settings, "simulate", *SIMULATE)
            m = re.search(r"datums sent (\d+)", out)
            assert m, out
            sent = int(m.group(1))
            wait_for(running(lambda: _count(client, DATUMS) == sent), 180, f"{sent} datums stored")
            streams = _count(client, "SELECT count() FROM (SELECT DISTINCT node_id, source_id, property FROM datum)")
            wait_for(running(lambda: _rollups_complete(client, streams)), 180, "every stream's rollups up to the year")
        log = (tmp / "worker.log").read_text()
        assert "Traceback" not in log, log[-3000:]
        unbound = _count(client, "SELECT count() FROM datum WHERE datastream = ''")
        assert unbound == 0, f"{unbound} samples stored unvalidated: the datamodels were not applied first"
        print(f"loaded {sent} datums, {streams} streams with rollups in {time.monotonic() - t0:.1f}s")
        yield client
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {database}")
        admin.close()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _count(client: Any, sql: str) -> int:
    try:
        return int(client.command(sql))
    except Exception:  # the views appear when the worker has migrated the schema
        return -1


def _rollups_complete(client: Any, streams: int) -> bool:
    levels = {r[0] for r in run(client, "SELECT DISTINCT periodicity FROM rollup")}
    years = _count(
        client,
        "SELECT count() FROM (SELECT DISTINCT node_id, source_id, property FROM rollup WHERE periodicity = 'year')",
    )
    return levels == PERIODICITIES and years == streams


@pytest.mark.parametrize("name", clickhouse_dashboards())
def test_every_clickhouse_query_returns_rows(demo: Any, name: str) -> None:
    client = demo
    dash = load_dashboards()[name]
    tr = TimeRange.relative(dash["time"]["from"], int(time.time() * 1000))
    interval_ms = tr.interval_ms()
    panels = clickhouse_panels(dash)
    seen: dict[str, int] = {}
    failures: list[str] = []
    combos = 0
    for values in assignments(client, dash, tr, interval_ms):
        combos += 1
        for q in panels:
            try:
                sql = expand_macros(interpolate(q.sql, values), tr, interval_ms)
            except AssertionError as exc:
                failures.append(f"{q.dashboard} / {q.panel}: {exc}")
                continue
            if sql in seen:
                continue
            try:
                seen[sql] = len(run(client, sql))
            except Exception as exc:
                seen[sql] = 0
                failures.append(f"{q.dashboard} / {q.panel} with {values}: fails: {str(exc)[:500]}\n{sql}")
                continue
            if not seen[sql]:
                failures.append(f"{q.dashboard} / {q.panel} with {values}: no rows\n{sql}")
    assert combos and panels
    print(f"{dash['title']}: {len(panels)} panel queries, {combos} variable combinations, {len(seen)} queries run")
    assert not failures, f"{len(failures)} failing queries:\n\n" + "\n\n".join(failures[:20])
