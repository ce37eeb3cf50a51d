"""A worker's /metrics, scraped after valid and invalid datums went through it: the exposition
parses (prometheus_client's parser and `promtool check metrics`) and every family the dashboards
and alerts rest on is there with values that agree with what was sent and stored."""

from __future__ import annotations

import math
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from pipeline.settings import Settings
from pipeline.wire.codec import DATUM_BATCH_V1, SCHEMA_HEADER, encode_batch
from pipeline.wire.producer import DatumProducer
from processors.datum import Datum
from sinks.clickhouse import connect, ensure_schema
from tests.integration.helpers import model_events, publish_metadata, wait_for, wait_for_catalog, worker_process
from tests.integration.test_templates import BINDINGS, MODEL  # the box datamodel with qratings

pytestmark = pytest.mark.integration

VALID = 120  # datums with one sample of each kind, all accepted and scored
SCHEMA = 10  # datums whose only sample breaks the schema (temp > 100): sample.schema
NAN = 5  # datums whose only sample is not finite: sample.non_finite
# one datum with a sourceId over 64 characters (source_id.too_long) and one undecodable message
EXPECTED_RULES = {"sample.schema": SCHEMA, "sample.non_finite": NAN, "source_id.too_long": 1, "envelope.corrupt": 1}
DATUMS = VALID + SCHEMA + NAN + 1


def promtool() -> str:
    exe = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if exe is None:
        pytest.fail("promtool is not installed: run .ci/install-system-packages (Debian package prometheus)")
    return exe


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def samples(text: str) -> tuple[dict[str, Any], list[Sample]]:
    """Families by name (counters without _total, as the parser gives them) and every sample."""
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return families, [s for f in families.values() for s in f.samples]


def value(all_samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples of one series name whose labels include `labels`."""
    return sum(s.value for s in all_samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def send(settings: Any) -> None:
    now = int(time.time() * 1000)
    t0 = now - (VALID + 60) * 1000  # the last minutes: created-to-stored stays small
    producer = DatumProducer(settings)
    producer.send(
        [
            Datum(
                1,
                "/box/1",
                t0 + k * 1000,
                {"temp": float(k % 40)},
                {"energy": 100.0 + k},
                {"state": "good" if k % 2 else "bad"},
            )
            for k in range(VALID)
        ]
    )
    producer.send([Datum(1, "/box/2", t0 + k * 1000, {"temp": 150.0}) for k in range(SCHEMA)])
    header = [(SCHEMA_HEADER, DATUM_BATCH_V1.encode())]
    topic = producer.topics.source("/box/3")
    producer.send_raw(
        topic, encode_batch([Datum(1, "/box/3", t0 + k * 1000, {"temp": math.nan}) for k in range(NAN)]), headers=header
    )
    producer.send_raw(topic, encode_batch([Datum(1, "/box/" + "x" * 70, t0, {"temp": 1.0})]), headers=header)
    producer.send_raw(topic, b"\x07not avro at all", headers=header)
    producer.flush()


def test_worker_metrics_after_valid_and_invalid_datums(worker_settings: Settings, tmp_path: Path) -> None:
    exe = promtool()
    settings = worker_settings
    assert settings.metrics_port
    events = model_events(tmp_path, MODEL, BINDINGS, "box model")
    publish_metadata(settings, events)
    client = connect(settings.clickhouse_url)
    ensure_schema(client)
    log = tmp_path / "worker.log"
    with worker_process(settings, log) as worker:
        wait_for_catalog(settings.postgres_dsn, len(events), log)
        send(settings)

        def settled() -> str | None:
            assert worker.poll() is None, log.read_text()[-3000:]
            try:
                text = scrape(settings.metrics_port)
            except OSError:
                return None
            _families, all_samples = samples(text)
            done = (
                value(all_samples, "pipeline_datums_in_total") == DATUMS
                and value(all_samples, "pipeline_dead_letters_total") == sum(EXPECTED_RULES.values())
                and value(all_samples, "pipeline_samples_accepted_total") == 3 * VALID
                # the lag timer runs every 5 s: every source topic with a position
                and len({s.labels["topic"] for s in all_samples if s.name == "pipeline_consumer_lag"}) >= 3
            )
            return text if done else None

        text = wait_for(settled, 120, "the worker's metrics to count everything sent", interval=0.5)
        scored = int(client.command("SELECT countIf(performance IS NOT NULL) FROM datum"))
        stored = int(client.command("SELECT count() FROM datum"))
        stored_datums = int(client.command("SELECT count(DISTINCT node_id, source_id, created) FROM datum"))

    # promtool's parser and linter
    check = subprocess.run([exe, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, f"promtool check metrics:\n{check.stdout}\n{check.stderr}"
    assert not check.stdout.strip() and not check.stderr.strip(), check.stdout + check.stderr

    families, all_samples = samples(text)
    types = {name: f.type for name, f in families.items()}
    expected_types = {
        "pipeline_messages_in": "counter",
        "pipeline_datums_in": "counter",
        "pipeline_samples_accepted": "counter",
        "pipeline_datums_accepted": "counter",
        "pipeline_dead_letters": "counter",
        "pipeline_agent_batch_seconds": "histogram",
        "pipeline_created_to_stored_seconds": "histogram",
        "pipeline_sink_batch_rows": "histogram",
        "pipeline_sink_insert_seconds": "histogram",
        "pipeline_sink_retries": "counter",
        "pipeline_sink_failures": "counter",
        "pipeline_consumer_lag": "gauge",
        "pipeline_last_stored_timestamp_seconds": "gauge",
        "pipeline_source_topics": "gauge",
        "pipeline_qrating_performance": "histogram",
    }
    missing = {k: v for k, v in expected_types.items() if types.get(k) != v}
    assert not missing, f"families missing or of another type: {missing} (scraped: {types})"

    # datums in, accepted, dead-lettered by reason
    assert value(all_samples, "pipeline_datums_in_total", agent="datums") == DATUMS
    assert value(all_samples, "pipeline_datums_accepted_total", agent="datums") == stored_datums
    assert 3 <= value(all_samples, "pipeline_messages_in_total", agent="datums") <= DATUMS + 1
    for kind in ("i", "a", "s"):
        assert value(all_samples, "pipeline_samples_accepted_total", kind=kind) == VALID, kind
    assert stored == 3 * VALID
    by_rule: dict[str, float] = {}
    for s in all_samples:
        if s.name == "pipeline_dead_letters_total":
            assert s.labels["stage"] in ("envelope", "validation"), s
            by_rule[s.labels["rule"]] = by_rule.get(s.labels["rule"], 0) + s.value
    assert by_rule == EXPECTED_RULES

    # per-agent processing latency, created to stored
    assert value(all_samples, "pipeline_agent_batch_seconds_count", agent="datums") > 0
    assert value(all_samples, "pipeline_agent_batch_seconds_sum", agent="datums") > 0
    assert value(all_samples, "pipeline_agent_batch_seconds_bucket", agent="datums", le="+Inf") == value(
        all_samples, "pipeline_agent_batch_seconds_count", agent="datums"
    )
    created = value(all_samples, "pipeline_created_to_stored_seconds_count")
    assert created > 0
    assert 0 < value(all_samples, "pipeline_created_to_stored_seconds_sum") / created < 3600

    # consumer lag per topic and partition: everything consumed
    lag = [s for s in all_samples if s.name == "pipeline_consumer_lag"]
    assert {s.labels["topic"] for s in lag} >= {
        settings.topic_prefix + t for t in ("datum..box.1", "datum..box.2", "datum..box.3")
    }
    assert all(s.labels["partition"].isdigit() and s.value >= 0 for s in lag), lag
    assert value(all_samples, "pipeline_consumer_lag") == 0

    # sinks: rows per insert add up to the rows stored, one duration per insert, no retries
    inserts = value(all_samples, "pipeline_sink_batch_rows_count", sink="raw")
    assert inserts > 0
    assert value(all_samples, "pipeline_sink_batch_rows_sum", sink="raw") == stored
    assert value(all_samples, "pipeline_sink_insert_seconds_count", sink="raw") == inserts
    assert value(all_samples, "pipeline_sink_insert_seconds_sum", sink="raw") > 0
    assert value(all_samples, "pipeline_sink_retries_total") == 0
    assert value(all_samples, "pipeline_sink_failures_total") == 0
    assert 0 < time.time() - value(all_samples, "pipeline_last_stored_timestamp_seconds", sink="raw") < 300
    assert value(all_samples, "pipeline_source_topics") >= 3

    # qRating distribution: one observation per scored datapoint stored, cumulative buckets
    assert value(all_samples, "pipeline_qrating_performance_count") == scored > 0
    buckets = sorted(
        (float(s.labels["le"]), s.value) for s in all_samples if s.name == "pipeline_qrating_performance_bucket"
    )
    assert [le for le, _ in buckets] == [0, 10, 25, 50, 75, 90, 99, 100, math.inf]
    counts = [c for _, c in buckets]
    assert counts == sorted(counts) and counts[-1] == scored
    assert counts[0] > 0 and counts[-2] > counts[0], f"expected a spread of performances: {buckets}"
