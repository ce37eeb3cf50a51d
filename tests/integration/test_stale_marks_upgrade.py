"""Stale marks across the upgrade to the binary format: a JSON mark of the old format still on the
topic is recomputed by the rollup agent, and a mark nobody can read is dead-lettered with its
bytes, not lost and not a crash."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pipeline.wire.producer import DatumProducer, TopicAdmin
from pipeline.wire.topics import stream_key
from processors.datum import Datum
from processors.rows import RawColumns
from sinks.clickhouse import RawSink, connect, ensure_schema
from sinks.rollups import ensure_rollup_schema, mark_rolled_up, not_rolled_up
from tests.integration.helpers import read_topic, settings_for, wait_for, worker_process

pytestmark = pytest.mark.integration

BASE_MS = 1_700_000_000_000


def test_old_json_marks_are_still_rolled_up_and_unreadable_marks_dead_lettered(
    kafka_bootstrap: str, clickhouse_url: str, ch_database: str, topic_prefix: str, tmp_path: Path
) -> None:
    s = settings_for(kafka_bootstrap, clickhouse_url, ch_database, topic_prefix)
    client = connect(s.clickhouse_url)
    ensure_schema(client)
    ensure_rollup_schema(client)
    node, source = 31, "/U1/meter"
    rows = RawColumns()
    for k in range(0, 3600, 60):  # an hour of a meter, stored by a worker of the old version
        rows.add_datum(Datum(node, source, BASE_MS + k * 1000, {"watts": float(k)}, a={"wattHours": float(10 * k)}))
    stamp = int(time.time() * 1000)
    RawSink(client).write(rows, inserted_ms=stamp)
    # the ledger lists it so the start-up repair leaves it alone: only the old mark can roll it up
    mark_rolled_up(client, [(node, source, stamp)])
    assert not not_rolled_up(client)
    old = json.dumps(
        {
            "node": node,
            "source": source,
            "inserted": stamp,
            "changes": [[p, k, c] for c, p, k in zip(rows.created, rows.property, rows.kind, strict=True)],
        }
    )
    producer = DatumProducer(s)
    TopicAdmin(s).ensure([producer.topics.rollup_stale, producer.topics.deadletter])
    junk = b"\x01\x00junk"  # the version byte, then nothing a mark can be read from
    producer.send_encoded(producer.topics.rollup_stale, stream_key(node, source), old.encode(), 0)
    producer.send_encoded(producer.topics.rollup_stale, stream_key(node, "/U1/other"), junk, 0)
    producer.flush()
    hours = f"SELECT count() FROM rollup WHERE periodicity = 'hour' AND node_id = {node}"
    with worker_process(s, tmp_path / "worker.log"):
        # 22:13:20 plus an hour touches two hours, of two properties
        wait_for(lambda: int(client.command(hours)) == 4, 120, "hourly rollups from the old mark")
        letters = read_topic(s.kafka_bootstrap, producer.topics.deadletter, 1, timeout=60)
    total = client.command(
        f"SELECT sum(diff) FROM rollup WHERE periodicity = 'hour' AND node_id = {node} AND property = 'wattHours'"
    )
    assert round(float(total), 6) == 10.0 * 3540
    assert [r["rule"] for x in letters for r in x["reasons"]] == ["internal.rollup"]
    assert letters[0]["origin"]["topic"] == producer.topics.rollup_stale
