"""Writes the provisioned Grafana dashboards, compose/grafana/dashboards/*.json.

The JSON files are committed (Grafana reads them); this file is their source. Edit it, then run
`.venv/bin/python compose/grafana/generate_dashboards.py`. tests/unit/test_grafana_provisioning.py
fails when the JSON and this file disagree, checks every PromQL metric name against
pipeline/worker/metrics.py, and tests/integration/test_grafana_queries.py runs every ClickHouse query
against a pipeline loaded with simulated data.

ClickHouse queries use the plugin's macros ($__timeFilter(col), $__fromTime, $__toTime,
$__interval_s, $__timeInterval(col)) and the dashboard's variables ($node, ${source:sqlstring}, ...).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
PROM = {"type": "prometheus", "uid": "pipeline-prometheus"}
CH = {"type": "grafana-clickhouse-datasource", "uid": "pipeline-clickhouse"}
TIMESERIES, TABLE = 0, 1  # the ClickHouse plugin's query formats (sqlds FormatQueryOption)
PERIODICITIES = ["raw", "halfhour", "hour", "day", "week", "month", "year"]


class Layout:
    """Panels left to right on Grafana's 24-column grid; row() starts a new titled row."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = self.height = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
            }
        )
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.height
            self.x = self.height = 0

    def add(self, panel: dict[str, Any], w: int = 12, h: int = 8) -> None:
        if self.x + w > 24:
            self._newline()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.height = max(self.height, h)

    def below(self, panel: dict[str, Any], h: int = 8) -> None:
        """Under the previous panel, as wide (beside a taller panel to its right)."""
        prev = self.panels[-1]["gridPos"]
        panel["gridPos"] = {"h": h, "w": prev["w"], "x": prev["x"], "y": prev["y"] + prev["h"]}
        self.panels.append(panel)
        self.height = max(self.height, panel["gridPos"]["y"] + h - self.y)

    def numbered(self) -> list[dict[str, Any]]:
        for k, panel in enumerate(self.panels, 1):
            panel["id"] = k
        return self.panels


def prom(
    expr: str, legend: str = "", ref: str = "A", fmt: str = "time_series", instant: bool = False
) -> dict[str, Any]:
    target: dict[str, Any] = {
        "refId": ref,
        "datasource": PROM,
        "expr": expr,
        "range": not instant,
        "instant": instant,
        "legendFormat": legend or "__auto",
    }
    if fmt != "time_series":
        target["format"] = fmt
    return target


def ch(sql: str, fmt: int = TIMESERIES, ref: str = "A") -> dict[str, Any]:
    return {
        "refId": ref,
        "datasource": CH,
        "editorType": "sql",
        "format": fmt,
        "queryType": "timeSeries" if fmt == TIMESERIES else "table",
        "rawSql": dedent(sql),
    }


def dedent(sql: str) -> str:
    lines = [line.rstrip() for line in sql.strip("\n").splitlines()]
    indent = min((len(line) - len(line.lstrip()) for line in lines if line.strip()), default=0)
    return "\n".join(line[indent:] for line in lines)


def panel(
    kind: str,
    title: str,
    targets: list[dict[str, Any]],
    description: str = "",
    unit: str = "",
    options: dict[str, Any] | None = None,
    custom: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> dict[str, Any]:
    field_defaults: dict[str, Any] = {**(defaults or {})}
    if unit:
        field_defaults["unit"] = unit
    if custom:
        field_defaults["custom"] = custom
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": targets[0]["datasource"],
        "targets": targets,
        "fieldConfig": {"defaults": field_defaults, "overrides": []},
        "options": options or {},
    }


def timeseries(
    title: str,
    targets: list[dict[str, Any]],
    unit: str = "",
    description: str = "",
    stacked: bool = False,
    bars: bool = False,
) -> dict[str, Any]:
    custom: dict[str, Any] = {
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 60 if bars else 10,
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
    }
    if stacked:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    return panel(
        "timeseries",
        title,
        targets,
        description,
        unit,
        custom=custom,
        options={
            "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True, "calcs": ["mean", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )


def stat(
    title: str,
    targets: list[dict[str, Any]],
    unit: str = "",
    description: str = "",
    decimals: int | None = None,
    fields: str = "",
    states: dict[str, tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """states: value -> (text, colour), e.g. {"0": ("waiting", "red")}: shown instead of the number."""
    defaults: dict[str, Any] = {"decimals": decimals} if decimals is not None else {}
    if states:
        defaults["mappings"] = [
            {
                "type": "value",
                "options": {
                    value: {"text": text, "color": color, "index": k}
                    for k, (value, (text, color)) in enumerate(states.items())
                },
            }
        ]
    return panel(
        "stat",
        title,
        targets,
        description,
        unit,
        defaults=defaults,
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": fields, "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
            "orientation": "auto",
        },
    )


def table(title: str, targets: list[dict[str, Any]], description: str = "") -> dict[str, Any]:
    return panel("table", title, targets, description, options={"showHeader": True, "cellHeight": "sm"})


def dashboard(
    uid: str,
    title: str,
    description: str,
    layout: Layout,
    variables: list[dict[str, Any]],
    time_from: str,
    tags: list[str],
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["telemetry-pipeline", *tags],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "timezone": "browser",
        "time": {"from": time_from, "to": "now"},
        "refresh": "1m",
        "liveNow": False,
        "annotations": {"list": []},
        "links": [
            {
                "title": "Telemetry pipeline",
                "type": "dashboards",
                "tags": ["telemetry-pipeline"],
                "asDropdown": True,
                "includeVars": False,
                "keepTime": True,
            },
        ],
        "templating": {"list": variables},
        "panels": layout.numbered(),
    }


def query_variable(
    name: str, label: str, datasource: dict[str, Any], query: str, include_all: bool = False, description: str = ""
) -> dict[str, Any]:
    var: dict[str, Any] = {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": datasource,
        "description": description,
        "definition": query,
        "query": query,
        "refresh": 2,  # on time range change: the lists follow the data shown
        "sort": 0,
        "multi": include_all,
        "includeAll": include_all,
        "hide": 0,
        "current": {},
        "options": [],
    }
    if include_all:
        var["allValue"] = ".*"
    return var


def custom_variable(name: str, label: str, values: list[str], description: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "custom",
        "description": description,
        "query": ",".join(values),
        "current": {"text": values[0], "value": values[0], "selected": True},
        "options": [{"text": v, "value": v, "selected": k == 0} for k, v in enumerate(values)],
        "multi": False,
        "includeAll": False,
        "hide": 0,
    }


# ---------------------------------------------------------------------------------------------
# 1. Pipeline health (Prometheus)

SEL = '{instance=~"$instance"}'
NOT_METADATA = '{instance=~"$instance", stage!="metadata"}'


def rate(metric: str, by: str = "", window: str = "$__rate_interval", selector: str = SEL) -> str:
    grouped = f"sum by ({by}) " if by else "sum "
    return f"{grouped}(rate({metric}{selector}[{window}]))"


def quantiles(metric: str, by: str, legend: str) -> list[dict[str, Any]]:
    group = f"le, {by}" if by else "le"
    return [
        prom(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{SEL}[$__rate_interval])))",
            f"p{int(q * 100)} {legend}".strip(),
            ref=chr(ord("A") + k),
        )
        for k, q in enumerate((0.5, 0.95, 0.99))
    ]


def pipeline_health() -> dict[str, Any]:
    lay = Layout()
    lay.row("Overview")
    lay.add(
        stat(
            "Workers up",
            [prom('count(up{job="pipeline-worker"} == 1) or vector(0)', "workers")],
            description="Worker targets Prometheus scrapes successfully (job pipeline-worker).",
        ),
        w=4,
        h=4,
    )
    lay.add(
        stat(
            "Datums in",
            [prom(rate("pipeline_datums_in_total"), "datums/s")],
            "short",
            "Datums decoded per second, all workers.",
            decimals=1,
        ),
        w=4,
        h=4,
    )
    lay.add(
        stat(
            "Dead letters",
            [prom(rate("pipeline_dead_letters_total"), "reasons/s")],
            "short",
            "Refusal reasons per second (a datum refused for two reasons counts twice).",
            decimals=2,
        ),
        w=4,
        h=4,
    )
    lay.add(
        stat(
            "Consumer lag",
            [prom(f"sum(max by (topic, partition) (pipeline_consumer_lag{SEL}))", "messages")],
            "short",
            "Messages behind the end of the source topics, summed over partitions.",
        ),
        w=4,
        h=4,
    )
    lay.add(
        stat(
            "Since last store",
            [prom(f"time() - max(pipeline_last_stored_timestamp_seconds{SEL})", "age")],
            "s",
            "Seconds since any worker last stored rows in ClickHouse.",
        ),
        w=4,
        h=4,
    )
    lay.add(
        stat(
            "Source topics",
            [prom(f"max(pipeline_source_topics{SEL})", "topics")],
            description="Per-source topics the workers subscribe to.",
        ),
        w=4,
        h=4,
    )

    lay.row("Throughput")
    lay.add(
        timeseries(
            "Datums and messages in",
            [
                prom(rate("pipeline_datums_in_total"), "datums/s"),
                prom(rate("pipeline_messages_in_total"), "messages/s", ref="B"),
                prom(rate("pipeline_datums_accepted_total"), "datums accepted/s", ref="C"),
            ],
            "short",
            "pipeline_datums_in_total, pipeline_messages_in_total and pipeline_datums_accepted_total: "
            "datums decoded, Kafka messages (one message is a batch of datums of one stream), datums "
            "with at least one sample stored.",
        )
    )
    lay.add(
        timeseries(
            "Samples accepted by kind",
            [
                prom(rate("pipeline_samples_accepted_total", "kind"), "{{kind}}"),
            ],
            "short",
            "Samples stored per second: i instantaneous, a accumulating, s status.",
            stacked=True,
        )
    )
    lay.add(
        timeseries(
            "Dead letters by reason",
            [
                prom(rate("pipeline_dead_letters_total", "stage, rule"), "{{stage}} {{rule}}"),
            ],
            "short",
            "Refusal reasons per second by stage and rule; read the pipeline.deadletter topic for the "
            "records themselves.",
            stacked=True,
            bars=True,
        ),
        w=16,
    )
    lay.add(
        timeseries(
            "Dead-letter share",
            [
                prom(
                    rate("pipeline_dead_letters_total", selector=NOT_METADATA)
                    + " / "
                    + rate("pipeline_datums_in_total"),
                    "reasons per datum",
                ),
            ],
            "percentunit",
            "Refusal reasons per decoded datum (metadata events excluded); the "
            "PipelineDeadLetterRateHigh alert fires above 5%.",
        ),
        w=8,
    )

    lay.row("Reliability")
    lay.add(
        timeseries(
            "Internal errors by stage",
            [
                prom(rate("pipeline_internal_errors_total", "stage"), "{{stage}}"),
            ],
            "short",
            "pipeline_internal_errors_total: exceptions (our defects) caught by the commit step, by stage; "
            "what made a stage throw is dead-lettered with rule internal.<stage>. A worker's first error "
            "of a stage starts the series at 1, which rate() cannot see: the PipelineInternalErrors alert "
            "does.",
            stacked=True,
            bars=True,
        ),
        w=8,
    )
    lay.add(
        stat(
            "Dependencies",
            [
                prom(f"min by (service) (pipeline_dependency_up{SEL})", "{{service}}"),
            ],
            description="pipeline_dependency_up, the worst worker's: up while the workers reach the service, "
            "waiting while one of them waits for it (it holds its batch and commits no offset "
            "meanwhile; the PipelineDependencyDown alert fires after a minute).",
            states={"0": ("waiting", "red"), "1": ("up", "green")},
        ),
        w=4,
    )
    lay.add(
        stat(
            "Rollup repairs (time range)",
            [
                prom(f"sum(increase(pipeline_rollup_repairs_total{SEL}[$__range]))", "batches", instant=True),
            ],
            "short",
            "pipeline_rollup_repairs_total: stored raw batches a starting worker found without rollups "
            "(marks lost with a broker, or a crash between store and marks) and marked stale again.",
            decimals=0,
        ),
        w=4,
    )
    lay.add(
        timeseries(
            "Expired on arrival",
            [
                prom(rate("pipeline_samples_expired_total"), "samples/s"),
                prom(rate("pipeline_datums_expired_total"), "datums/s", ref="B"),
            ],
            "short",
            "pipeline_samples_expired_total and pipeline_datums_expired_total: stored, but already past "
            "their datastream's storage period when they arrived (a backfill): the raw rows go after a "
            "grace period, the rollups stay.",
        ),
        w=8,
    )
    lay.add(
        timeseries(
            "Rollup point cache",
            [
                prom(rate("pipeline_rollup_cache_windows_total"), "windows from held points/s"),
                prom(rate("pipeline_rollup_cache_fills_total"), "streams read in/s", ref="B"),
                prom(f"sum(pipeline_rollup_cache_points{SEL})", "points held", ref="C"),
            ],
            "short",
            "pipeline_rollup_cache_windows_total, pipeline_rollup_cache_fills_total and "
            "pipeline_rollup_cache_points: the rollup agent's held raw points. A window recomputed from them "
            "costs the store no read; a stream read in costs one. Many fills and few windows: streams held "
            "too briefly (raise PIPELINE_ROLLUP_CACHE_POINTS).",
        ),
        w=8,
    )
    lay.add(
        timeseries(
            "Running rollups",
            [
                prom(rate("pipeline_rollup_running_appends_total"), "series steps appended/s"),
                prom(rate("pipeline_rollup_running_one_at_a_time_total"), "of those one at a time/s", ref="B"),
                prom(rate("pipeline_rollup_running_seeded_total"), "series seeded/s", ref="C"),
                prom(rate("pipeline_rollup_running_fallbacks_total"), "streams to the store/s", ref="D"),
                prom(f"sum(pipeline_rollup_running_series{SEL})", "series held", ref="E"),
            ],
            "short",
            "pipeline_rollup_running_*: series whose open rollup buckets the rollup agent holds as running "
            "sums. A step of appended readings extends them (every level, no read of the store); anything "
            "else (a late or corrected reading, a reset) goes to the store's recompute and seeds the series "
            "again. Many fallbacks: late data, or PIPELINE_ROLLUP_RUNNING_SERIES too small for the streams.",
        ),
        w=8,
    )

    lay.row("Latency")
    lay.add(
        timeseries(
            "Agent batch latency",
            quantiles("pipeline_agent_batch_seconds", "agent", "{{agent}}"),
            "s",
            "pipeline_agent_batch_seconds: one batch from decode to ack, store included.",
        )
    )
    lay.add(
        timeseries(
            "Created to stored",
            quantiles("pipeline_created_to_stored_seconds", "", ""),
            "s",
            "pipeline_created_to_stored_seconds: from the newest datum's created time to its batch "
            "being stored. Backfills and late uploads show as hours.",
        )
    )

    lay.row("Kafka")
    lay.add(
        timeseries(
            "Consumer lag per topic and partition",
            [
                prom(f"max by (topic, partition) (pipeline_consumer_lag{SEL})", "{{topic}} [{{partition}}]"),
            ],
            "short",
            "Messages behind the partition's end. A worker keeps the last value of a partition it lost in a "
            "rebalance until it restarts.",
        ),
        w=16,
    )
    lay.add(
        timeseries(
            "Consumer lag, total",
            [
                prom(f"sum(max by (topic, partition) (pipeline_consumer_lag{SEL}))", "lag"),
            ],
            "short",
        ),
        w=8,
    )

    lay.row("ClickHouse sinks")
    lay.add(
        timeseries(
            "Rows per insert",
            [
                *quantiles("pipeline_sink_batch_rows", "sink", "{{sink}}")[:2],
                prom(
                    f"sum by (sink) (rate(pipeline_sink_batch_rows_sum{SEL}[$__rate_interval])) / "
                    f"sum by (sink) (rate(pipeline_sink_batch_rows_count{SEL}[$__rate_interval]))",
                    "mean {{sink}}",
                    ref="C",
                ),
            ],
            "short",
            "pipeline_sink_batch_rows: rows of one insert, per sink (raw, latest).",
        ),
        w=8,
    )
    lay.add(
        timeseries(
            "Insert duration",
            quantiles("pipeline_sink_insert_seconds", "sink", "{{sink}}"),
            "s",
            "pipeline_sink_insert_seconds: one insert into ClickHouse.",
        ),
        w=8,
    )
    lay.add(
        timeseries(
            "Retries and failures",
            [
                prom(rate("pipeline_sink_retries_total", "sink"), "retries {{sink}}"),
                prom(rate("pipeline_sink_failures_total", "sink"), "failures {{sink}}", ref="B"),
            ],
            "short",
            "Inserts that failed and were retried (raw, latest, rollup). Offsets are not committed while a "
            "batch retries.",
        ),
        w=8,
    )
    lay.add(
        timeseries(
            "Rows stored",
            [
                prom(rate("pipeline_sink_batch_rows_sum", "sink"), "{{sink}}"),
            ],
            "short",
            "Rows inserted per second, per sink.",
            stacked=True,
        )
    )
    lay.add(
        timeseries(
            "Since last store, per sink",
            [
                prom(f"time() - max by (sink) (pipeline_last_stored_timestamp_seconds{SEL})", "{{sink}}"),
            ],
            "s",
            "Seconds since the last successful insert of each sink.",
        )
    )

    lay.row("qRating")
    heat = panel(
        "heatmap",
        "qRating performance distribution",
        [
            prom(
                f"sum by (le) (increase(pipeline_qrating_performance_bucket{SEL}[$__rate_interval]))",
                "{{le}}",
                fmt="heatmap",
            ),
        ],
        "pipeline_qrating_performance: performance (0-100) of each scored datapoint stored, per bucket upper bound.",
        options={
            "calculate": False,
            "yAxis": {"axisPlacement": "left", "unit": "none"},
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "RdYlGn", "steps": 32, "exponent": 0.5},
            "rowsFrame": {"layout": "auto"},
            "legend": {"show": True},
            "tooltip": {"mode": "single"},
        },
    )
    lay.add(heat, w=12)
    lay.add(
        panel(
            "bargauge",
            "Scored datapoints by performance (time range)",
            [
                prom(
                    f"sum by (le) (increase(pipeline_qrating_performance_bucket{SEL}[$__range]))",
                    "≤ {{le}}",
                    fmt="heatmap",
                    instant=True,
                ),
            ],
            "Scored datapoints per performance bucket (labelled by its upper bound) over the dashboard's time range.",
            options={
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "orientation": "horizontal",
                "displayMode": "gradient",
                "showUnfilled": True,
            },
        ),
        w=6,
    )
    lay.add(
        stat(
            "Mean performance",
            [
                prom(
                    f"sum(rate(pipeline_qrating_performance_sum{SEL}[$__rate_interval])) / "
                    f"sum(rate(pipeline_qrating_performance_count{SEL}[$__rate_interval]))",
                    "mean",
                ),
            ],
            "none",
            "Mean qRating performance of the datapoints scored.",
            decimals=1,
        ),
        w=6,
    )

    variables = [
        query_variable(
            "instance",
            "Worker",
            PROM,
            "label_values(pipeline_datums_in_total, instance)",
            include_all=True,
            description="Worker instances (host:port)",
        )
    ]
    return dashboard(
        "pipeline-health",
        "Pipeline health",
        "Workers' Prometheus metrics (pipeline/worker/metrics.py): throughput, dead letters, reliability "
        "(internal errors, dependencies, rollup repairs, expired on arrival), latency, consumer lag, "
        "ClickHouse sinks, qRating distribution.",
        lay,
        variables,
        "now-6h",
        ["prometheus"],
    )


# ---------------------------------------------------------------------------------------------
# 2. Device data explorer (ClickHouse: datum, rollup)

STREAM = "node_id = $node AND source_id = ${source:sqlstring} AND property = ${property:sqlstring}"
# Rollup buckets that overlap the time range (a year bucket starts before a six-hour range).
OVERLAP = "ts_end > $__fromTime AND ts_start <= $__toTime"


def by_periodicity(raw_select: str, rollup_select: str, columns: str) -> str:
    """Raw samples (averaged per $__interval_s) when $periodicity is raw, else the rollup rows."""
    return f"""
        SELECT {columns}
        FROM (
            SELECT toStartOfInterval(created, INTERVAL $__interval_s second) AS time, {raw_select}
            FROM datum
            WHERE '$periodicity' = 'raw' AND {STREAM} AND $__timeFilter(created)
            GROUP BY time
            UNION ALL
            SELECT ts_start AS time, {rollup_select}
            FROM rollup
            WHERE periodicity = '$periodicity' AND {STREAM} AND {OVERLAP}
        )
        ORDER BY time
        """


def device_explorer() -> dict[str, Any]:
    lay = Layout()
    lay.row("Fleet")
    lay.add(
        table(
            "Nodes",
            [
                ch(
                    """
        SELECT node_id, uniqExact(source_id) AS sources, count() AS samples,
               min(created) AS first_datum, max(created) AS last_datum,
               dateDiff('second', max(created), now64(3)) AS silent_s
        FROM datum
        WHERE $__timeFilter(created)
        GROUP BY node_id
        ORDER BY node_id
        """,
                    TABLE,
                )
            ],
            "Every node with data in the time range, and how long ago its last datum was created "
            "(the per-node view the PipelineNodesSilent alert cannot give).",
        ),
        w=12,
    )
    lay.add(
        timeseries(
            "Samples stored per source on node $node",
            [
                ch("""
        SELECT $__timeInterval(created) AS time, source_id, count() AS samples
        FROM datum
        WHERE node_id = $node AND $__timeFilter(created)
        GROUP BY time, source_id
        ORDER BY time
        """)
            ],
            "short",
            "Samples per interval of each source of the node.",
            stacked=True,
            bars=True,
        ),
        w=12,
    )

    lay.row("$source $property ($periodicity)")
    lay.add(
        timeseries(
            "$property on node $node, $source ($periodicity)",
            [
                ch(
                    by_periodicity(
                        "avg(value) AS mean, min(value) AS minimum, max(value) AS maximum",
                        "if(kind = 'a', read_end, avg) AS mean, min AS minimum, max AS maximum",
                        "time, mean, minimum, maximum",
                    )
                )
            ],
            description="raw: the samples averaged per interval (min and max beside). Rollups: the bucket's "
            "average, min and max (instantaneous) or the reading at the bucket's end (accumulating). "
            "Status properties have no numbers: see the tables.",
        ),
        w=24,
        h=9,
    )
    lay.add(
        timeseries(
            "Accumulated per bucket ($periodicity)",
            [
                ch(
                    by_periodicity(
                        "if(any(kind) = 'a', max(value) - min(value), NULL) AS difference",
                        "diff AS difference",
                        "time, difference",
                    )
                )
            ],
            description="Accumulating properties only: the rollup's diff (the clock difference shared over buckets "
            "in proportion to time), or max − min of the raw readings per interval.",
            bars=True,
        ),
        w=12,
    )
    lay.add(
        timeseries(
            "Samples per bucket ($periodicity)",
            [ch(by_periodicity("count() AS samples", "count AS samples", "time, samples"))],
            "short",
            "Raw samples per interval, or the rollup bucket's count.",
            bars=True,
        ),
        w=12,
    )
    lay.add(
        table(
            "Raw samples (newest 500 in range)",
            [
                ch(
                    f"""
        SELECT created, kind, value, text, tags, datastream, score, performance, label, quality, inserted
        FROM datum
        WHERE {STREAM} AND $__timeFilter(created)
        ORDER BY created DESC
        LIMIT 500
        """,
                    TABLE,
                )
            ],
            "The view datum: one row per sample, duplicates removed.",
        ),
        w=12,
        h=9,
    )
    lay.add(
        table(
            "Rollup buckets ($periodicity; halfhour when raw)",
            [
                ch(
                    f"""
        SELECT periodicity, ts_start, ts_end, kind, count, avg, min, max, diff, read_diff, read_start, read_end,
               mode, tags
        FROM rollup
        WHERE periodicity = if('$periodicity' = 'raw', 'halfhour', '$periodicity') AND {STREAM} AND {OVERLAP}
        ORDER BY ts_start DESC
        LIMIT 500
        """,
                    TABLE,
                )
            ],
            "The view rollup: buckets on the node's local clock, stored in UTC.",
        ),
        w=12,
        h=9,
    )

    variables = [
        query_variable(
            "node",
            "Node",
            CH,
            dedent("""
            SELECT DISTINCT node_id FROM datum_raw WHERE $__timeFilter(created) ORDER BY node_id
            """),
        ),
        query_variable(
            "source",
            "Source",
            CH,
            dedent("""
            SELECT DISTINCT source_id FROM datum_raw WHERE node_id = $node AND $__timeFilter(created)
            ORDER BY source_id
            """),
        ),
        query_variable(
            "property",
            "Property",
            CH,
            dedent("""
            SELECT DISTINCT property FROM datum_raw
            WHERE node_id = $node AND source_id = ${source:sqlstring} AND $__timeFilter(created)
            ORDER BY property
            """),
        ),
        custom_variable(
            "periodicity", "Periodicity", PERIODICITIES, "raw samples, or a rollup level (docs/rollups.md)"
        ),
    ]
    return dashboard(
        "device-explorer",
        "Device data explorer",
        "Raw samples and rollups of one (node, source, property) from ClickHouse (views datum and rollup).",
        lay,
        variables,
        "now-24h",
        ["clickhouse"],
    )


# ---------------------------------------------------------------------------------------------
# 3. qRating (ClickHouse: datum)

SCORED = "node_id = $node AND performance IS NOT NULL AND $__timeFilter(created)"


def qrating() -> dict[str, Any]:
    lay = Layout()
    lay.row("Node $node over the time range")
    device = ch(
        f"""
        SELECT sum(ms * perf / 100) AS score, sum(ms) AS max_score, 100 * score / max_score AS q_performance,
               avg(perf) AS avg_performance, count() AS datastreams
        FROM (
            SELECT datastream, avg(performance) AS perf, argMax(max_score, created) AS ms
            FROM datum
            WHERE {SCORED}
            GROUP BY datastream
        )
        """,
        TABLE,
    )
    lay.add(
        stat(
            "Device qRating",
            [device],
            "none",
            "q_performance: performance weighted by each datastream's max_score; avg_performance: every "
            "datastream weighs the same (docs/qrating.md, as OpenGate's console combines them).",
            decimals=1,
            fields="/^(q_performance|avg_performance|datastreams)$/",
        ),
        w=16,
        h=5,
    )
    lay.below(
        timeseries(
            "Device qRating over time",
            [
                ch(f"""
        SELECT time, 100 * sum(ms * perf / 100) / sum(ms) AS q_performance, avg(perf) AS avg_performance
        FROM (
            SELECT toStartOfInterval(created, INTERVAL $__interval_s second) AS time, datastream,
                   avg(performance) AS perf, argMax(max_score, created) AS ms
            FROM datum
            WHERE {SCORED}
            GROUP BY time, datastream
        )
        GROUP BY time
        ORDER BY time
        """)
            ],
            "none",
            "The device formula per interval, over the datastreams scored in it.",
        ),
        h=5,
    )

    lay.add(
        table(
            "Fleet: device qRating per node",
            [
                ch(
                    """
        SELECT node_id, sum(ds_max_score * ds_performance / 100) AS score, sum(ds_max_score) AS max_score,
               round(100 * score / max_score, 1) AS q_performance, round(avg(ds_performance), 1) AS avg_performance,
               count() AS datastreams
        FROM (
            SELECT node_id, datastream, avg(performance) AS ds_performance,
                   argMax(max_score, created) AS ds_max_score
            FROM datum
            WHERE performance IS NOT NULL AND $__timeFilter(created)
            GROUP BY node_id, datastream
        )
        GROUP BY node_id
        ORDER BY q_performance
        """,
                    TABLE,
                )
            ],
            "Every node with scored data in the time range, worst first.",
        ),
        w=8,
        h=10,
    )
    lay.row("Datastreams of node $node")
    lay.add(
        timeseries(
            "Performance per datastream",
            [
                ch(f"""
        SELECT $__timeInterval(created) AS time, datastream, avg(performance) AS mean_performance
        FROM datum
        WHERE {SCORED}
        GROUP BY time, datastream
        ORDER BY time
        """)
            ],
            "none",
            "Mean performance (0-100) per interval of each scored datastream.",
        )
    )
    lay.add(
        timeseries(
            "Datapoints by quality",
            [
                ch(f"""
        SELECT $__timeInterval(created) AS time, quality, count() AS datapoints
        FROM datum
        WHERE {SCORED} AND quality != ''
        GROUP BY time, quality
        ORDER BY time
        """)
            ],
            "short",
            "Scored datapoints per band: ideal, desired, acceptable, critical.",
            stacked=True,
            bars=True,
        )
    )
    lay.add(
        table(
            "Datastreams",
            [
                ch(
                    f"""
        SELECT datastream, round(avg(performance), 1) AS avg_performance, min(performance) AS min_performance,
               argMax(label, created) AS latest_label, argMax(quality, created) AS latest_quality,
               argMax(max_score, created) AS latest_max_score, count() AS datapoints,
               countIf(quality = 'critical') AS critical
        FROM datum
        WHERE {SCORED}
        GROUP BY datastream
        ORDER BY avg_performance
        """,
                    TABLE,
                )
            ],
            "Each scored datastream of the node over the time range, worst first.",
        ),
        w=12,
        h=9,
    )
    lay.add(
        timeseries(
            "$datastream: value and performance",
            [
                ch("""
        SELECT toStartOfInterval(created, INTERVAL $__interval_s second) AS time,
               avg(value) AS mean_value, avg(performance) AS mean_performance
        FROM datum
        WHERE node_id = $node AND datastream = ${datastream:sqlstring} AND performance IS NOT NULL
          AND $__timeFilter(created)
        GROUP BY time
        ORDER BY time
        """)
            ],
            description="The datastream's values (averaged per interval; none for text values scored "
            "through a conversion matrix) and their performance.",
        ),
        w=12,
        h=9,
    )

    variables = [
        query_variable(
            "node",
            "Node",
            CH,
            dedent("""
            SELECT DISTINCT node_id FROM datum_raw WHERE performance IS NOT NULL AND $__timeFilter(created)
            ORDER BY node_id
            """),
        ),
        query_variable(
            "datastream",
            "Datastream",
            CH,
            dedent("""
            SELECT DISTINCT datastream FROM datum_raw
            WHERE node_id = $node AND performance IS NOT NULL AND $__timeFilter(created)
            ORDER BY datastream
            """),
        ),
    ]
    return dashboard(
        "qrating",
        "qRating",
        "Quality of devices and datastreams over time, from the scores stored with every datapoint (docs/qrating.md).",
        lay,
        variables,
        "now-24h",
        ["clickhouse"],
    )


DASHBOARDS = {
    "pipeline-health.json": pipeline_health,
    "device-explorer.json": device_explorer,
    "qrating.json": qrating,
}


def render(name: str) -> str:
    return json.dumps(DASHBOARDS[name](), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name in DASHBOARDS:
        (OUT / name).write_text(render(name))
        print(OUT / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
