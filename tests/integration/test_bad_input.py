"""Bad input on the real components (issue 12): values already stored that are inf, NaN or huge
are served, never a 500; every bad `pipeline ingest` line has a report and a dead letter; a
corrupt message too big for a whole dead letter gets one capped letter, and the partition goes on."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import math
import random
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from pipeline.gateway.ingest import IngestReport, ingest_json
from pipeline.settings import Settings
from pipeline.wire.codec import DATUM_BATCH_V1, SCHEMA_HEADER
from pipeline.wire.producer import DatumProducer
from pipeline.wire.topics import stream_key
from pipeline.worker.rollups import recompute_range
from processors import timeseries as ts
from processors.datum import NODE_ID_MAX, Datum
from sinks.clickhouse import connect, ensure_schema
from tests.integration.helpers import read_topic, scratch_clickhouse, settings_for, wait_for, worker_process
from tests.integration.test_api import api_process, api_settings, write

pytestmark = pytest.mark.integration

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
T0 = 1_730_376_000_000  # 2024-10-31T12:00Z


# --- the API never answers 500 for stored data -----------------------------------------------


def test_stored_inf_nan_and_huge_values_are_served_as_null(clickhouse_url: str, tmp_path: Path) -> None:
    """Rows written straight to ClickHouse, past the envelope rules (stored before the bound
    existed): 1e308 makes rollup sums inf and differences -inf/NaN; the API still answers 200, with
    null where the number has no JSON spelling, in every format and in `compare`."""
    with scratch_clickhouse(clickhouse_url, "t_bad") as (database, client):
        huge = [1e308, 1e308, math.inf, math.nan, 5.0]
        write(
            client,
            [
                Datum(1, "/huge", T0 + k * 10 * MIN, i={"w": v}, a={"wh": v if k != 1 else -1e308})
                for k, v in enumerate(huge)
            ]
            + [Datum(1, "/huge", T0 + DAY + k * 10 * MIN, i={"w": 2.0 * k}) for k in range(3)],
        )
        recompute_range(client, 1, "/huge", T0 - DAY, T0 + 2 * DAY, lambda _n, _ms: "UTC")
        stored = client.query(
            "SELECT avg, diff FROM rollup WHERE periodicity = 'hour' AND property IN ('w', 'wh')"
            f" AND ts_start = fromUnixTimestamp64Milli(toInt64({T0}))"
        ).result_rows
        assert any(v is not None and not math.isfinite(v) for row in stored for v in row), stored
        w = ts.series_name(ts.SeriesKey(1, "/huge", "w"))
        wh = ts.series_name(ts.SeriesKey(1, "/huge", "wh"))
        with api_process(api_settings(clickhouse_url, database), tmp_path / "api.log") as api:
            raw = api.data(series=w)[w]["data"]
            assert [p["val"] for p in raw] == [1e308, 1e308, None, None, 5.0, 0.0, 2.0, 4.0]
            for per in ("halfhour", "hour", "day", "month"):
                for name in (w, wh):
                    r = api.get(series=name, periodicity=per)
                    assert r.status == 200, (per, name, r.body[:300])
                    for p in r.json()[name]["data"]:
                        for key in ("val", "min", "max", "start", "end"):
                            v = p.get(key)
                            assert v is None or math.isfinite(v), (per, name, p)
            hour = api.data(series=w, periodicity="hour")[w]["data"]
            assert hour[0]["val"] is None and hour[0]["count"] == 5  # the inf average is null, the count stays
            assert hour[-1]["val"] == 2.0  # the finite day after is untouched
            for fmt in ("csv", "xml"):
                r = api.get(series=f"{w},{wh}", periodicity="hour", format=fmt)
                assert r.status == 200, r.body[:300]
                text = r.body.decode()
                assert "inf" not in text and "nan" not in text
            rows = list(csv.DictReader(io.StringIO(api.get(series=w, periodicity="hour", format="csv").body.decode())))
            assert rows[0]["val"] == "" and rows[0]["count"] == "5" and rows[-1]["val"] == "2.0"
            ET.fromstring(api.get(series=w, periodicity="hour", format="xml").body)
            # the baseline of two inf hours is null, not a 500
            at = ts.format_time(T0 + DAY + HOUR)
            r = api.get(series=f"{w},{wh}", periodicity="hour", compare="timeOfDay", at=at)
            assert r.status == 200, r.body[:300]
            assert r.json()[w]["baseline"]["val"] is None


# --- every bad ingest line has a report, and the counts are what the pipeline does ----------

BASE = "2023-11-14 22:13:20Z"
BASE_MS = 1_700_000_000_000


def line(node: object, created: object, samples: dict[str, object] | None, source: str = "/S1/M1") -> str:
    doc: dict[str, object] = {"nodeId": node, "sourceId": source, "created": created}
    if samples is not None:
        doc["samples"] = samples
    return json.dumps(doc)


def stored(client: object) -> list[tuple[int, str, str, float]]:
    rows = client.query(  # type: ignore[attr-defined]
        "SELECT node_id, source_id, property, value FROM datum ORDER BY node_id, source_id, property"
    ).result_rows
    return [(int(n), str(s), str(p), float(v)) for n, s, p, v in rows]


@pytest.fixture
def settings(kafka_bootstrap: str, clickhouse_url: str, ch_database: str, topic_prefix: str) -> Settings:
    s = settings_for(kafka_bootstrap, clickhouse_url, ch_database, topic_prefix)
    ensure_schema(connect(s.clickhouse_url))
    return s


def test_every_bad_ingest_line_is_reported_and_counted_as_the_pipeline_treats_it(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        "\n".join(
            [
                line(1, BASE, {"i": {"w": 1.0}}),  # 1 stored
                line(2**64, BASE, {"i": {"w": 1.0}}),  # 2 OverflowError before
                line(1, 10**15, {"i": {"w": 1.0}}),  # 3 year 33658: no datetime
                line(1, -(10**20), {"i": {"w": 1.0}}),  # 4
                line(1, "2023-11-14 22:13:21Z", {"i": {"w": 1e308, "ok": 3.0}}),  # 5 w refused, ok stored
                line(1, "2023-11-14 22:13:22Z", None),  # 6 no samples
                line(1, "2023-11-14 22:13:23Z", {"t": ["only-a-tag"]}),  # 7 no samples either
                line(1, "2023-11-14 22:13:24Z", {"a": {"wh": 10**400}}),  # 8 its only sample refused
                line(NODE_ID_MAX, BASE, {"i": {"w": 2.0}}),  # 9 the largest nodeId: stored
            ]
        )
        + "\n"
    )
    producer = DatumProducer(settings)
    report = IngestReport()
    ingest_json(producer, [path], report)
    # a datum without samples and a huge sample sent by another producer: the worker's rules
    producer.send([Datum(3, "/S1/direct", BASE_MS), Datum(3, "/S1/direct", BASE_MS + 1, {"v": 1.0, "huge": -1e300})])
    producer.flush()
    assert (report.lines_read, report.datums_sent, report.lines_rejected, report.samples_rejected) == (9, 3, 6, 1)
    assert report.without_samples == 2
    assert "without samples 2 (among the rejected: nothing to store)" in report.summary()
    assert report.rejected_by_rule == {
        "json.node_id": 1,
        "created.in_future": 1,
        "created.too_old": 1,
        "sample.out_of_range": 2,
        "datum.no_samples": 2,
    }
    letters = read_topic(settings.kafka_bootstrap, f"{settings.topic_prefix}pipeline.deadletter", 7)
    assert sorted((x["line"], x["reasons"][0]["rule"]) for x in letters) == [
        (2, "json.node_id"),
        (3, "created.in_future"),
        (4, "created.too_old"),
        (5, "sample.out_of_range"),
        (6, "datum.no_samples"),
        (7, "datum.no_samples"),
        (8, "sample.out_of_range"),
    ]
    assert all(x["file"] == str(path) and x["stage"] == "ingest" for x in letters)
    client = connect(settings.clickhouse_url)
    with worker_process(settings, tmp_path / "worker.log"):
        want = [
            (1, "/S1/M1", "ok", 3.0),
            (1, "/S1/M1", "w", 1.0),
            (3, "/S1/direct", "v", 1.0),
            (NODE_ID_MAX, "/S1/M1", "w", 2.0),
        ]
        wait_for(lambda: stored(client) == want, 120, "the good datums and samples stored")
        # the worker dead-letters what ingest would have refused: nothing is accepted and not stored
        all_letters = read_topic(
            settings.kafka_bootstrap, f"{settings.topic_prefix}pipeline.deadletter", 10, timeout=20
        )
    worker = [x for x in all_letters if x["stage"] != "ingest"]
    assert sorted(r["rule"] for x in worker for r in x["reasons"]) == ["datum.no_samples", "sample.out_of_range"]
    assert len(all_letters) == 9
    assert "Traceback" not in (tmp_path / "worker.log").read_text()


# --- a corrupt message too big for a whole dead letter -----------------------------------------


def test_a_79_mb_corrupt_message_gets_one_capped_letter_and_the_partition_goes_on(
    settings: Settings, tmp_path: Path
) -> None:
    """Before: the letter (bytes + base64 + reasons) was 10.5 MB, over the broker's 8 MiB; the
    agent crashed on every restart and the partition was stuck."""
    source = "/S7/big"
    garbage = random.Random(7).randbytes(7_900_000)
    producer = DatumProducer(settings)
    topic = producer.topics.source(source)
    # the key of the stream: the garbage and the good datum after it share a partition
    producer.send_raw(topic, garbage, key=stream_key(1, source), headers=[(SCHEMA_HEADER, DATUM_BATCH_V1.encode())])
    producer.flush()
    producer.send([Datum(1, source, BASE_MS, {"w": 7.0})])
    producer.flush()
    client = connect(settings.clickhouse_url)
    with worker_process(settings, tmp_path / "worker.log"):
        wait_for(lambda: stored(client) == [(1, source, "w", 7.0)], 180, "the good datum after the garbage stored")
        letters = read_topic(settings.kafka_bootstrap, producer.topics.deadletter, 2, timeout=20)
    assert len(letters) == 1
    letter = letters[0]
    assert letter["reasons"][0]["rule"].startswith("envelope.")
    assert letter["origin"]["topic"] == topic
    assert letter["payload_bytes"] == len(garbage) and letter["payload_truncated"] is True
    assert letter["payload_sha256"] == hashlib.sha256(garbage).hexdigest()
    kept = base64.b64decode(letter["payload_base64"])
    assert garbage.startswith(kept) and len(kept) > 1_000_000
    assert len(json.dumps(letter, separators=(",", ":"))) <= settings.max_message_bytes // 2
