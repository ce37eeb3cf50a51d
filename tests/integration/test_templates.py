"""Templates from the history log on a running pipeline: validation, qRating, template changes
in data time, rates across a restart of everything but the stores."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest

from pipeline.wire.producer import DatumProducer
from processors.datum import Datum
from sinks import history
from sinks.clickhouse import connect, ensure_schema
from tests.integration.helpers import model_events, publish_metadata, read_topic, settings_for, wait_for, worker_process

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z
HOUR = 3_600_000
QR = {
    "version": "1",
    "max_score": 100,
    "min_required": {"value": 0, "label": "DEAD"},
    "min_desired": {"value": 10, "label": "LOW"},
    "ideal": {"value": 20, "label": "OK"},
    "max_desired": {"value": 30, "label": "WARM"},
    "max_allowed": {"value": 40, "label": "HOT"},
}
MODEL = {
    "identifier": "box",
    "name": "box",
    "description": "a test box",
    "version": "1",
    "categories": [
        {
            "identifier": "c",
            "name": "c",
            "datastreams": [
                {
                    "identifier": "box.temp",
                    "name": "t",
                    "description": "t",
                    "schema": {"type": "number", "maximum": 100},
                    "qrating": QR,
                },
                {
                    "identifier": "box.energy",
                    "name": "e",
                    "description": "e",
                    "period": "CUMULATIVE",
                    "schema": {"type": "number"},
                    "qrating": {**QR, "cumulative_period_divisor": 3600},
                },
                {
                    "identifier": "box.state",
                    "name": "s",
                    "description": "s",
                    "schema": {"type": "string"},
                    "qrating": {**QR, "conversion_matrix": {"good": 20, "bad": 0}},
                },
            ],
        }
    ],
}
BINDINGS = {
    "bindings": [
        {
            "node_id": None,
            "source_pattern": "/box/**",
            "datamodel": "box",
            "properties": {"temp": "box.temp", "energy": "box.energy", "state": "box.state"},
        }
    ]
}


def applied(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            return history.catalog_version(conn)
        except psycopg.Error:
            return 0


@pytest.fixture
def box(kafka_bootstrap: str, clickhouse_url: str, ch_database: str, topic_prefix: str, pg_dsn: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = settings_for(kafka_bootstrap, clickhouse_url, ch_database, topic_prefix)._with({"postgres_dsn": pg_dsn})
    publish_metadata(settings, model_events(tmp_path, MODEL, BINDINGS, "box model"))
    client = connect(settings.clickhouse_url)
    ensure_schema(client)
    return settings, client


def test_mixed_input_counts_add_up_and_scores_are_stored(box, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, client = box
    datums, valid, invalid = [], 0, 0
    for k in range(300):
        temp = 150.0 if k % 10 == 3 else float(k % 40)  # every 10th-ish breaks the schema (max 100)
        state = "weird" if k % 15 == 7 else "good"  # not in the conversion matrix
        datums.append(Datum(1, "/box/1", T0 + k * 60_000, {"temp": temp}, {}, {"state": state}))
        valid += (temp <= 100) + (state != "weird")
        invalid += (temp > 100) + (state == "weird")
    producer = DatumProducer(settings)
    producer.send(datums)
    producer.send([Datum(1, "/box/1", T0, {"unknown": 1.0})])  # maps to no datastream
    producer.flush()
    with worker_process(settings, tmp_path / "worker.log"):
        wait_for(lambda: int(client.command("SELECT count() FROM datum")) == valid, 120, f"{valid} valid samples")
        letters = read_topic(settings.kafka_bootstrap, settings.topic_prefix + "pipeline.deadletter", invalid + 1)
    # warm-up, the metadata agent and the timer all refresh the catalog: none may crash the worker
    assert "Traceback" not in (tmp_path / "worker.log").read_text()
    reasons = [r for x in letters if x["stage"] == "validation" for r in x["reasons"]]
    assert sorted({r["rule"] for r in reasons}) == ["qrating.conversion_missing", "sample.schema", "sample.unmapped"]
    assert len(reasons) == invalid + 1
    assert all("datum" in x and x["origin"]["topic"].endswith("datum..box.1") for x in letters)
    row = client.query(
        "SELECT score, performance, label, quality, max_score, datastream FROM datum "
        "WHERE property = 'temp' AND value = 15"
    ).first_row
    assert row == (75.0, 75.0, "OK", "desired", 100.0, "box.temp")
    # device level, one query (docs/qrating.md): both datastreams' mean performance, weighted
    device = client.query(
        "SELECT sum(ms * perf / 100) AS score, sum(ms) AS max_score, 100 * score / max_score AS q, avg(perf) "
        "FROM (SELECT datastream, avg(performance) AS perf, argMax(max_score, created) AS ms FROM datum "
        "WHERE node_id = 1 AND performance IS NOT NULL GROUP BY datastream)"
    ).first_row
    perfs = client.query(
        "SELECT avg(performance) FROM datum WHERE performance IS NOT NULL GROUP BY datastream ORDER BY datastream"
    ).result_rows
    expected_score = sum(100 * p[0] / 100 for p in perfs)
    assert device[0] == pytest.approx(expected_score) and device[1] == 200.0
    assert device[2] == pytest.approx(expected_score / 2) and device[3] == pytest.approx(expected_score / 2)


def test_template_change_applies_in_data_time_without_restart(box, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, client = box
    producer = DatumProducer(settings)
    with worker_process(settings, tmp_path / "worker.log"):
        producer.send([Datum(1, "/box/1", T0, {"temp": 35.0})])
        producer.flush()
        wait_for(lambda: int(client.command("SELECT count() FROM datum")) == 1, 120, "first datum")
        version = applied(settings.postgres_dsn)
        # from T0 + 1 day on, 35 degrees is ideal
        change = {
            "event_id": str(uuid.uuid4()),
            "entity": "datastream_template",
            "key": {"datamodel": "box", "datastream": "box.temp"},
            "op": "set_valid",
            "value": {
                "qrating": {
                    **QR,
                    "min_desired": {"value": 30, "label": "LOW"},
                    "ideal": {"value": 35, "label": "OK"},
                    "max_desired": {"value": 38, "label": "WARM"},
                }
            },
            "valid_from": "2023-11-15T22:13:20Z",
            "valid_to": None,
            "author": "test",
            "comment": "new box",
            "produced_at": "2023-11-20T00:00:00Z",
        }
        publish_metadata(settings, [change])
        wait_for(lambda: applied(settings.postgres_dsn) > version, 60, "the template change applied")
        # a datum after the change, and a replay of one before it
        producer.send([Datum(1, "/box/1", T0 + 25 * HOUR, {"temp": 35.0})])
        producer.send([Datum(1, "/box/1", T0 + HOUR, {"temp": 35.0})])
        producer.flush()
        wait_for(lambda: int(client.command("SELECT count() FROM datum")) == 3, 120, "three datums")
    query = "SELECT toUnixTimestamp64Milli(created), quality, label FROM datum ORDER BY created"
    rows = client.query(query).result_rows
    assert rows == [(T0, "acceptable", "WARM"), (T0 + HOUR, "acceptable", "WARM"), (T0 + 25 * HOUR, "ideal", "OK")]


def test_cumulative_rate_survives_a_restart_of_everything_but_the_stores(box, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, client = box
    producer = DatumProducer(settings)
    producer.send([Datum(1, "/box/1", T0, {}, {"energy": 1000.0})])
    producer.flush()
    with worker_process(settings, tmp_path / "worker1.log"):
        wait_for(lambda: int(client.command("SELECT count() FROM datum")) == 1, 120, "the first reading")
    # A broker that kept nothing: new topics, new consumer group, a fresh worker process.
    fresh = settings._with({"topic_prefix": settings.topic_prefix + "again.", "app_id": settings.app_id + "-again"})
    publish_metadata(fresh, [])
    again = DatumProducer(fresh)
    again.send([Datum(1, "/box/1", T0 + HOUR, {}, {"energy": 1020.0})])  # 20 Wh in an hour: ideal
    again.flush()
    with worker_process(fresh, tmp_path / "worker2.log"):
        wait_for(lambda: int(client.command("SELECT count() FROM datum")) == 2, 120, "the second reading")
    rows = client.query("SELECT value, score, quality FROM datum ORDER BY created").result_rows
    assert rows == [(1000.0, None, ""), (1020.0, 100.0, "ideal")]
