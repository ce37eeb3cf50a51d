"""Storage TTL per datastream, NEVER-stored datastreams, and set operations on WRITE datastreams."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from pipeline.gateway.commands import send_set_request
from pipeline.wire.producer import DatumProducer
from processors.datum import Datum
from processors.metadata import parse_event
from processors.rows import RawColumns
from sinks import history
from sinks.clickhouse import RAW_GRACE_DAYS, RawSink, connect, ensure_schema
from tests.integration.helpers import model_events, publish_metadata, read_topic, settings_for, wait_for, worker_process
from tests.integration.test_templates import applied

pytestmark = pytest.mark.integration

DAY = 86_400_000


def stream(ident: str, **extra: object) -> dict[str, object]:
    return {"identifier": ident, "name": ident, "description": ident, "schema": {"type": "number"}, **extra}


MODEL = {
    "identifier": "vault",
    "name": "vault",
    "description": "storage test",
    "version": "1",
    "categories": [
        {
            "identifier": "c",
            "name": "c",
            "datastreams": [
                stream("vault.short", storage={"period": "DAYS", "total": 1}),
                stream("vault.keep", storage={"period": "YEARS", "total": 10}),
                stream("vault.never", storage={"period": "NEVER"}),
                stream("vault.setpoint", access="READ,WRITE", schema={"type": "number", "minimum": 0, "maximum": 50}),
            ],
        }
    ],
}
BINDINGS = {
    "bindings": [
        {
            "node_id": None,
            "source_pattern": "/vault/1",
            "datamodel": "vault",
            "properties": {
                "short": "vault.short",
                "keep": "vault.keep",
                "never": "vault.never",
                "setpoint": "vault.setpoint",
            },
        }
    ]
}


@pytest.fixture
def vault(kafka_bootstrap: str, clickhouse_url: str, ch_database: str, topic_prefix: str, pg_dsn: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = settings_for(kafka_bootstrap, clickhouse_url, ch_database, topic_prefix)._with({"postgres_dsn": pg_dsn})
    events = model_events(tmp_path, MODEL, BINDINGS, "vault")
    return settings, events


def test_ttl_expires_one_datastream_and_never_keeps_only_the_latest(vault, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, events = vault
    publish_metadata(settings, events)
    client = connect(settings.clickhouse_url)
    ensure_schema(client)
    producer = DatumProducer(settings)
    with worker_process(settings, tmp_path / "worker.log"):
        wait_for(lambda: applied(settings.postgres_dsn) >= 2, 120, "the datamodel and binding applied")
        # one day minus 15 s old: a one-day TTL runs out 15 s from now
        expires_ms = int(time.time() * 1000) + 15_000
        created = expires_ms - DAY
        producer.send(
            [
                Datum(5, "/vault/1", created, {"short": 1.0, "keep": 2.0, "never": 3.0}),
                Datum(5, "/vault/1", created + 1, {"never": 4.0}),
            ]
        )
        producer.flush()
        wait_for(lambda: int(client.command("SELECT count() FROM datum")) == 2, 60, "two stored rows")
        wait_for(lambda: int(client.command("SELECT count() FROM datum_latest")) == 1, 60, "the latest value")
    assert client.query("SELECT property, ttl_days FROM datum_raw FINAL ORDER BY property").result_rows == [
        ("keep", 3653),
        ("short", 1),
    ]
    assert client.query("SELECT property, value FROM datum_latest").result_rows == [("never", 4.0)]
    # A raw row stays at least RAW_GRACE_DAYS after its insert (its rollups are computed from it):
    # the same rows, as if the worker had stored them that long ago, expire with their datastream.
    rows = RawColumns()
    for prop, value, ttl in client.query("SELECT property, value, ttl_days FROM datum_raw FINAL").result_rows:
        rows.add(Datum(5, "/vault/1", created, {prop: value}), "i", prop, value, "vault", ttl=ttl)
    client.command("TRUNCATE TABLE datum_raw")
    RawSink(client).write(rows, inserted_ms=int(time.time() * 1000) - (RAW_GRACE_DAYS * DAY + 60_000))
    assert int(client.command("SELECT count() FROM datum_raw")) == 2  # not expired yet: 15 s to go
    time.sleep(max(0.0, (expires_ms - time.time() * 1000) / 1000) + 1.5)
    client.command("OPTIMIZE TABLE datum_raw FINAL")  # a forced merge applies the row TTL
    assert client.query("SELECT property FROM datum_raw").result_rows == [("keep",)]
    assert client.query("SELECT property FROM datum").result_rows == [("keep",)]


def test_set_operations_accept_write_and_refuse_read(vault) -> None:  # type: ignore[no-untyped-def]
    settings, events = vault
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        history.migrate(conn)
        for e in events:
            assert history.apply_event(conn, parse_event(e)).status == "applied"
    ok = send_set_request(settings, 5, "vault.setpoint", 21.5, "/vault/1", "tester")
    assert ok["accepted"] and ok["topic"] == f"{settings.topic_prefix}node.5.commands"
    refused = [
        send_set_request(settings, 5, "vault.keep", 1.0, "/vault/1"),  # READ only
        send_set_request(settings, 5, "vault.setpoint", 99, "/vault/1"),  # schema maximum 50
        send_set_request(settings, 5, "nope.nothing", 1, "/vault/1"),
    ]
    assert [(r["accepted"], r["rule"]) for r in refused] == [
        (False, "set.not_writable"),
        (False, "set.schema"),
        (False, "set.unknown_datastream"),
    ]
    (command,) = read_topic(settings.kafka_bootstrap, ok["topic"], 1)
    assert (command["node_id"], command["source_id"], command["datastream"], command["value"]) == (
        5,
        "/vault/1",
        "vault.setpoint",
        21.5,
    )
