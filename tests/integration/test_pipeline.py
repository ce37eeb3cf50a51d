"""End to end on the real broker, ClickHouse endpoint and PostgreSQL: ingest → worker → query."""

from __future__ import annotations

import base64
import json
import signal
import threading
from pathlib import Path

import pytest

from pipeline.gateway.ingest import ingest_files
from pipeline.wire.codec import DATUM_BATCH_V1, SCHEMA_HEADER, encode_batch
from pipeline.wire.producer import DatumProducer
from processors.datum import Datum
from sinks.clickhouse import connect, ensure_schema
from tests.integration.helpers import datum_line, read_topic, settings_for, wait_for, worker_process

pytestmark = pytest.mark.integration

BASE_MS = 1_700_000_000_000


def write_datums(path: Path, n: int, sources: int = 5) -> None:
    with path.open("w") as fh:
        for k in range(n):
            created = BASE_MS + (k // sources) * 1000
            fh.write(
                json.dumps(
                    {
                        "nodeId": 1 + k % 3,
                        "sourceId": f"/S1/M{k % sources}",
                        "created": created,
                        "samples": {"i": {"watts": float(k)}, "a": {"wattHours": float(k * 2)}, "s": {"mode": "auto"}},
                    }
                )
                + "\n"
            )


def distinct_datums(client) -> int:  # type: ignore[no-untyped-def]
    return int(client.command("SELECT count(DISTINCT node_id, source_id, created) FROM datum"))


@pytest.fixture
def pipeline_settings(kafka_bootstrap: str, clickhouse_url: str, ch_database: str, topic_prefix: str):  # type: ignore[no-untyped-def]
    settings = settings_for(kafka_bootstrap, clickhouse_url, ch_database, topic_prefix)
    client = connect(settings.clickhouse_url)
    ensure_schema(client)
    return settings, client


def test_ingest_n_datums_shows_exactly_n(pipeline_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, client = pipeline_settings
    n = 3000
    write_datums(tmp_path / "d.jsonl", n)
    report = ingest_files(settings, [tmp_path / "d.jsonl"], "json")
    assert (report.lines_read, report.datums_sent, report.lines_rejected) == (n, n, 0)
    with worker_process(settings, tmp_path / "worker.log"):
        wait_for(lambda: distinct_datums(client) == n, 120, f"{n} datums in ClickHouse")
        # all three samples of every datum, and no duplicates
        assert int(client.command("SELECT count() FROM datum")) == 3 * n
        row = client.query(
            "SELECT property, kind, value, text FROM datum WHERE source_id = '/S1/M1' "
            f"AND created = fromUnixTimestamp64Milli(toInt64({BASE_MS})) ORDER BY property"
        ).result_rows
        assert row == [("mode", "s", None, "auto"), ("wattHours", "a", 2.0, ""), ("watts", "i", 1.0, "")]


def test_sigkill_mid_ingest_still_exactly_n(pipeline_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, client = pipeline_settings
    # batches of at most 8,000 datums: the kill lands between batches, not after the only one
    settings = settings._with({"batch_max_datums": 2000})
    n = 60_000
    write_datums(tmp_path / "d.jsonl", n, sources=4)
    ingest = threading.Thread(target=ingest_files, args=(settings, [tmp_path / "d.jsonl"], "json"))
    with worker_process(settings, tmp_path / "worker1.log") as first:
        ingest.start()
        stored = wait_for(
            lambda: distinct_datums(client) > 0 and distinct_datums(client), 120, "the first datums stored"
        )
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    ingest.join(120)
    killed_at = distinct_datums(client)
    assert killed_at < n, f"the worker finished ({stored}) before it could be killed"
    with worker_process(settings, tmp_path / "worker2.log"):
        wait_for(lambda: distinct_datums(client) == n, 180, f"{n} datums after the restart")
        assert int(client.command("SELECT count() FROM datum")) == 3 * n


def test_corrupt_and_invalid_input_goes_to_dead_letters(pipeline_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, client = pipeline_settings
    producer = DatumProducer(settings)
    topic = producer.topics.source("/S9/corrupt")
    producer.send_raw(topic, b"\x07not avro at all", headers=[(SCHEMA_HEADER, DATUM_BATCH_V1.encode())])
    producer.send_raw(topic, encode_batch([Datum(1, "/S9/corrupt", BASE_MS, {"w": 1.0})]))  # no header
    good = Datum(1, "/S9/corrupt", BASE_MS, {"w": 2.0, "bad": float("nan")})
    producer.send_raw(
        topic,
        encode_batch([good, Datum(1, "/S9/" + "x" * 70, BASE_MS, {"w": 1.0})]),
        headers=[(SCHEMA_HEADER, DATUM_BATCH_V1.encode())],
    )
    producer.flush()
    with worker_process(settings, tmp_path / "worker.log"):
        letters = read_topic(settings.kafka_bootstrap, producer.topics.deadletter, 4, timeout=120)
        wait_for(lambda: distinct_datums(client) == 1, 60, "the good datum stored")
    rules = sorted(r["rule"] for letter in letters for r in letter["reasons"])
    assert rules == ["envelope.corrupt", "envelope.no_schema_header", "sample.non_finite", "source_id.too_long"]
    corrupt = next(x for x in letters if x["reasons"][0]["rule"] == "envelope.corrupt")
    assert base64.b64decode(corrupt["payload_base64"]) == b"\x07not avro at all"
    assert corrupt["origin"]["topic"] == topic and corrupt["origin"]["offset"] >= 0
    nan = next(x for x in letters if x["reasons"][0]["rule"] == "sample.non_finite")
    assert nan["reasons"][0]["property"] == "bad" and nan["datum"]["samples"]["i"]["w"] == 2.0
    # the sibling of the bad sample was stored
    assert client.command("SELECT value FROM datum WHERE property = 'w'") == 2.0


def test_bad_lines_at_ingest_are_dead_lettered_with_line_numbers(pipeline_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, _client = pipeline_settings
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        "\n".join(
            [
                datum_line(1, "/S1/M1", "2023-11-14 22:13:20Z", w=1.0),
                "{broken",
                datum_line(1, "/S1/M1#", "2023-11-14 22:13:21Z", w=1.0),
                datum_line(1, "/S1/M1", "2023-11-14 22:13:22", w=1.0),
                datum_line(1, "/S1/M1", "2023-11-14 22:13:23Z", w=2.0),
            ]
        )
        + "\n"
    )
    report = ingest_files(settings, [path], "json")
    assert (report.lines_read, report.datums_sent, report.lines_rejected) == (5, 2, 3)
    letters = read_topic(settings.kafka_bootstrap, f"{settings.topic_prefix}pipeline.deadletter", 3)
    assert sorted((x["line"], x["reasons"][0]["rule"]) for x in letters) == [
        (2, "json.syntax"),
        (3, "source_id.wildcard"),
        (4, "created.unparseable"),
    ]
    assert all(x["file"] == str(path) for x in letters)


def test_new_source_topic_is_consumed_without_restart(pipeline_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, client = pipeline_settings
    producer = DatumProducer(settings)
    producer.send([Datum(1, "/S1/first", BASE_MS, {"w": 1.0})])
    producer.flush()
    with worker_process(settings, tmp_path / "worker.log"):
        wait_for(lambda: distinct_datums(client) == 1, 120, "the first source stored")
        # a source the worker has never seen: its topic is created now
        producer.send([Datum(1, "/S2/brand-new", BASE_MS, {"w": 2.0})])
        producer.flush()
        wait_for(lambda: distinct_datums(client) == 2, 120, "the new source stored")
    assert "/S2/brand-new" in {r[0] for r in client.query("SELECT DISTINCT source_id FROM datum").result_rows}
