"""compose/grafana: the provisioned data sources, dashboard provider and dashboards, checked without
Grafana: every file parses, every data source uid a dashboard names is provisioned, every PromQL
expression is valid (promtool) and names only metrics pipeline/worker/metrics.py exports, every variable a
query uses is defined, the compose mounts hold what the provisioning refers to, and the committed
JSON is what compose/grafana/generate_dashboards.py writes. The ClickHouse queries themselves run
in tests/integration/test_grafana_queries.py."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from pipeline.worker.metrics import build_metrics
from tests.unit.test_compose import COMPOSE, COMPOSE_DIR, load_yaml
from tests.unit.test_prometheus_rules import exported_series

GRAFANA_DIR = COMPOSE_DIR / "grafana"
PROVISIONING = GRAFANA_DIR / "provisioning"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"
GENERATOR = GRAFANA_DIR / "generate_dashboards.py"
CLICKHOUSE_PLUGIN = "grafana-clickhouse-datasource"
# Series that are not the workers' own: Prometheus's scrape health.
PROMETHEUS_SERIES = {"up"}


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_dashboards", GENERATOR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def provisioned(kind: str) -> list[dict[str, Any]]:
    files = sorted((PROVISIONING / kind).glob("*.y*ml"))
    assert files, f"no provisioning files in {PROVISIONING / kind}"
    docs = [load_yaml(f) for f in files]
    for f, doc in zip(files, docs, strict=True):
        assert isinstance(doc, dict) and doc.get("apiVersion") == 1, f"{f}: not a provisioning file"
    return docs


def datasources() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for doc in provisioned("datasources"):
        for ds in doc["datasources"]:
            assert ds.get("uid"), f"data source {ds.get('name')} has no fixed uid"
            assert ds["uid"] not in out, f"uid {ds['uid']} provisioned twice"
            out[ds["uid"]] = ds
    return out


def dashboards() -> dict[str, dict[str, Any]]:
    files = sorted(DASHBOARD_DIR.glob("*.json"))
    assert len(files) >= 3, f"expected at least three dashboards in {DASHBOARD_DIR}"
    return {f.name: json.loads(f.read_text()) for f in files}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dashboard.get("panels", []):
        yield p
        yield from p.get("panels", [])  # panels of a collapsed row


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(where, data source, query text) of every panel target and every query variable."""
    for p in panels(dashboard):
        for t in p.get("targets", []):
            ds = t.get("datasource") or p.get("datasource") or {}
            text = t.get("expr") if ds.get("type") == "prometheus" else t.get("rawSql")
            yield f"panel {p.get('title')!r} target {t.get('refId')}", ds, text or ""
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            text = q if isinstance(q, str) else (q or {}).get("rawSql") or (q or {}).get("query") or ""
            yield f"variable {v['name']!r}", v.get("datasource") or {}, text


def grafana_service() -> dict[str, Any]:
    return load_yaml(COMPOSE)["services"]["grafana"]


# ---------------------------------------------------------------------------------------------
# PromQL: metric names and syntax

# $__rate_interval etc. and the dashboards' own variables, as Grafana would fill them in
PROM_VARIABLES = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h", "instance": ".*"}
_LABEL_GROUP = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The series names an expression selects (functions, labels, strings and durations dropped).
    label_values(metric, label) counts its metric only."""
    expr = re.sub(r"label_values\(\s*([a-zA-Z_:][\w:]*)\s*,[^)]*\)", r"\1", expr)
    expr = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges
    expr = re.sub(r"\$\{?\w+\}?", " ", expr)  # Grafana variables left over
    expr = _LABEL_GROUP.sub(" ", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", expr):
        name, call = m.group(1), m.group(2)
        if not call and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def expand_prom(expr: str) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in PROM_VARIABLES, f"unknown variable ${name} in {expr}"
        return PROM_VARIABLES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, expr)


def prometheus_expressions() -> list[tuple[str, str]]:
    out = []
    for name, dash in dashboards().items():
        for where, ds, text in queries(dash):
            if ds.get("type") == "prometheus":
                out.append((f"{name} {where}", text))
    assert out, "no PromQL in the dashboards"
    return out


def test_metric_names_are_the_workers() -> None:
    exported = exported_series()
    used: set[str] = set()
    for where, expr in prometheus_expressions():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = sorted(names - exported - PROMETHEUS_SERIES)
        assert not unknown, f"{where}: not exported by pipeline/worker/metrics.py: {unknown} in {expr!r}"
        used |= names
    # the dashboards show every metric family the workers export
    families = {f.name for m in vars(build_metrics(CollectorRegistry())).values() for f in m.describe()}
    missing = sorted(f for f in families if not any(u == f or u.startswith(f + "_") for u in used))
    assert not missing, f"metrics no dashboard shows: {missing}"


def test_the_name_check_catches_wrong_names() -> None:
    assert metric_names('sum by (le, agent) (rate(pipeline_agent_batch_seconds_bucket{instance=~"$x"}[5m]))') == {
        "pipeline_agent_batch_seconds_bucket"
    }
    assert metric_names("label_values(pipeline_datums_in_total, instance)") == {"pipeline_datums_in_total"}
    assert metric_names('count(up{job="w"} == 1) or vector(0)') == {"up"}
    assert metric_names("time() - max by (sink) (pipeline_last_stored_timestamp_seconds)") == {
        "pipeline_last_stored_timestamp_seconds"
    }
    wrong = metric_names("rate(pipeline_dead_letter_total[1m]) / rate(pipeline_sink_failures[1m])")
    assert wrong - exported_series() == {"pipeline_dead_letter_total", "pipeline_sink_failures"}


def test_promql_is_valid(tmp_path: Path) -> None:
    """Every expression, its variables filled in, as a recording rule: `promtool check rules` parses it."""
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed: run .ci/install-system-packages (Debian package prometheus)")
    exprs = [
        (where, expand_prom(expr)) for where, expr in prometheus_expressions() if not expr.startswith("label_values(")
    ]
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [{"record": f"dashboard:expr{k}", "expr": expr} for k, (_where, expr) in enumerate(exprs)],
            }
        ]
    }
    (tmp_path / "dashboards.rules.yml").write_text(json.dumps(rules, indent=1))  # JSON is YAML
    result = subprocess.run(
        [exe, "check", "rules", "dashboards.rules.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        index = {f"dashboard:expr{k}": f"{where}: {expr}" for k, (where, expr) in enumerate(exprs)}
        pytest.fail(f"promtool check rules:\n{result.stdout}\n{result.stderr}\n" + "\n".join(index.values()))


# ---------------------------------------------------------------------------------------------
# Files, data sources, compose


def test_every_provisioned_file_parses() -> None:
    files = [f for f in GRAFANA_DIR.rglob("*") if f.is_file() and f.suffix in (".yml", ".yaml", ".json")]
    assert files
    for f in files:
        doc = json.loads(f.read_text()) if f.suffix == ".json" else load_yaml(f)
        assert isinstance(doc, dict), f"{f}: not a mapping"


def test_data_sources() -> None:
    sources = datasources()
    by_type = {ds["type"]: ds for ds in sources.values()}
    assert set(by_type) == {CLICKHOUSE_PLUGIN, "prometheus"}, sorted(by_type)
    service = grafana_service()
    env = service["environment"]
    compose = load_yaml(COMPOSE)
    # the plugin is installed by the grafana container
    plugins = env.get("GF_INSTALL_PLUGINS", "") + "," + env.get("GF_PLUGINS_PREINSTALL", "")
    assert CLICKHOUSE_PLUGIN in re.split(r"[,\s;]+", plugins), "the grafana service does not install the plugin"

    chs = by_type[CLICKHOUSE_PLUGIN]["jsonData"]
    # Grafana reads as the read-only user the ClickHouse service defines (issue 14)
    assert (chs["host"], chs["port"], chs["protocol"], chs["username"]) == (
        "clickhouse",
        8123,
        "http",
        "pipeline_reader",
    )
    users = (COMPOSE.parent / "clickhouse" / "users.d" / "pipeline_reader.xml").read_text()
    assert "<pipeline_reader>" in users and "<readonly>2</readonly>" in users
    assert "clickhouse" in compose["services"]
    # the same password the ClickHouse service is given
    password = by_type[CLICKHOUSE_PLUGIN]["secureJsonData"]["password"]
    var = re.fullmatch(r"\$\{?(\w+)\}?", password)
    assert var, f"the ClickHouse password should come from the environment, not {password!r}"
    assert env.get(var.group(1)) == compose["services"]["clickhouse"]["environment"]["CLICKHOUSE_READER_PASSWORD"], (
        f"grafana's {var.group(1)} is not the ClickHouse server's CLICKHOUSE_READER_PASSWORD"
    )
    assert by_type["prometheus"]["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
    # every $VAR the provisioning files' values use is in grafana's environment
    for f in PROVISIONING.rglob("*.y*ml"):
        for value in strings(load_yaml(f)):
            for name in re.findall(r"\$\{?([A-Za-z_]\w*)\}?", value):
                assert name in env, f"{f.name}: ${name} is not set in the grafana service's environment"


def strings(doc: Any) -> Iterator[str]:
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, dict):
        for v in doc.values():
            yield from strings(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from strings(v)


def test_dashboards_use_provisioned_data_sources() -> None:
    sources = datasources()
    for name, dash in dashboards().items():
        refs: list[tuple[str, Any]] = []
        for p in panels(dash):
            if p.get("type") != "row":
                refs.append((f"panel {p.get('title')!r}", p.get("datasource")))
                refs += [
                    (f"panel {p.get('title')!r} target {t.get('refId')}", t.get("datasource"))
                    for t in p.get("targets", [])
                ]
        refs += [
            (f"variable {v['name']!r}", v.get("datasource"))
            for v in dash["templating"]["list"]
            if v.get("type") == "query"
        ]
        assert refs, f"{name}: no panels"
        for where, ref in refs:
            assert isinstance(ref, dict) and ref.get("uid"), f"{name} {where}: no data source uid"
            assert ref["uid"] in sources, f"{name} {where}: uid {ref['uid']} is not provisioned"
            assert ref.get("type") == sources[ref["uid"]]["type"], f"{name} {where}: type {ref.get('type')}"


def test_dashboards_are_well_formed() -> None:
    dashes = dashboards()
    uids = [d["uid"] for d in dashes.values()]
    assert len(set(uids)) == len(uids), uids
    titles = {d["title"] for d in dashes.values()}
    assert {"Pipeline health", "Device data explorer", "qRating"} <= titles
    for name, dash in dashes.items():
        ids = [p["id"] for p in panels(dash)]
        assert len(set(ids)) == len(ids), f"{name}: panel ids repeat"
        defined = {v["name"] for v in dash["templating"]["list"]}
        for where, ds, text in queries(dash):
            assert text.strip(), f"{name} {where}: empty query"
            used = {m.group(1) or m.group(2) for m in re.finditer(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", text)}
            undefined = sorted(u for u in used if not u.startswith("__") and u not in defined)
            assert not undefined, f"{name} {where}: undefined variables {undefined}"
            if ds.get("type") == CLICKHOUSE_PLUGIN:
                assert "$__timeFilter(" in text or "$__fromTime" in text or where.startswith("variable"), (
                    f"{name} {where}: a ClickHouse query that ignores the time range"
                )


def test_clickhouse_targets_are_the_plugins() -> None:
    """SQL editor targets as the plugin saves them: its query types, sqlds's formats (0 time series,
    1 table), and a time column first for time series."""
    for name, dash in dashboards().items():
        for p in panels(dash):
            for t in p.get("targets", []):
                if (t.get("datasource") or {}).get("type") != CLICKHOUSE_PLUGIN:
                    continue
                where = f"{name} panel {p.get('title')!r}"
                assert t.get("editorType") == "sql" and t.get("rawSql"), where
                assert (t.get("queryType"), t.get("format")) in {("timeSeries", 0), ("table", 1)}, where
                if t["format"] == 0:
                    assert p["type"] in ("timeseries", "barchart"), where
                    assert re.search(r"\bAS time\b", t["rawSql"]), f"{where}: no time column"


def test_explorer_variables() -> None:
    dash = next(d for d in dashboards().values() if d["title"] == "Device data explorer")
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert {"node", "source", "property", "periodicity"} <= set(variables)
    for name in ("node", "source", "property"):
        assert variables[name]["type"] == "query" and variables[name]["datasource"]["type"] == CLICKHOUSE_PLUGIN
    periodicity = variables["periodicity"]
    assert periodicity["type"] == "custom"
    assert periodicity["query"].split(",") == ["raw", "halfhour", "hour", "day", "week", "month", "year"]


def test_compose_mounts_what_the_provisioning_refers_to() -> None:
    service = grafana_service()
    mounts: dict[str, Path] = {}
    for entry in service["volumes"]:
        parts = entry.split(":")
        if len(parts) >= 2 and parts[0].startswith("."):
            source = (COMPOSE_DIR / parts[0]).resolve()
            assert source.exists(), f"grafana mounts {parts[0]}, which does not exist"
            mounts[parts[1]] = source

    def host_path(container_path: str) -> Path:
        target = PurePosixPath(container_path)
        for inside, source in mounts.items():
            if target == PurePosixPath(inside) or PurePosixPath(inside) in target.parents:
                return source / target.relative_to(inside)
        pytest.fail(f"{container_path} is not mounted into the grafana container")

    assert host_path("/etc/grafana/provisioning") == PROVISIONING.resolve()
    providers = [p for doc in provisioned("dashboards") for p in doc["providers"]]
    assert providers
    for provider in providers:
        assert provider["type"] == "file"
        folder = host_path(provider["options"]["path"])
        assert folder == DASHBOARD_DIR.resolve(), folder
        assert sorted(folder.glob("*.json")), f"{folder}: no dashboards"
    home = service["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert host_path(home).is_file(), f"home dashboard {home} does not exist"


def test_committed_json_is_generated() -> None:
    gen = generator()
    names = set(gen.DASHBOARDS)
    assert names == {f.name for f in DASHBOARD_DIR.glob("*.json")}, "dashboards without a generator, or unwritten"
    for name in sorted(names):
        assert (DASHBOARD_DIR / name).read_text() == gen.render(name), (
            f"{name} differs from compose/grafana/generate_dashboards.py: edit the generator and run it"
        )
