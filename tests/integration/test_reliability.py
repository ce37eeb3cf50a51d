"""Nothing is lost whatever fails (issue 12): one test per defect that lost data before.

Each runs on the real broker, ClickHouse endpoint and PostgreSQL; the ones that stop a service
start their own copy of it, so the session's shared services stay up for the other tests.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pipeline import cli
from pipeline.embedded import stack
from pipeline.gateway.ingest import ingest_files
from pipeline.wire.codec import CURRENT, SCHEMA_HEADER, encode_batch
from pipeline.wire.producer import DatumProducer
from pipeline.wire.topics import stream_key
from processors.datum import Datum
from processors.rows import RawColumns
from sinks.clickhouse import RawSink, connect, ensure_schema
from sinks.rollups import ensure_rollup_schema, mark_rolled_up, not_rolled_up
from tests.integration.helpers import (
    publish_metadata,
    read_topic,
    settings_for,
    wait_for,
    worker_process,
)
from tests.samples import metadata_event

pytestmark = pytest.mark.integration

BASE_MS = 1_700_000_000_000


def distinct_datums(client: Any) -> int:
    return int(client.command("SELECT count(DISTINCT node_id, source_id, created) FROM datum"))


def meter(node: int, source: str, k: int) -> Datum:
    return Datum(node, source, BASE_MS + k * 1000, {"watts": float(k)}, a={"wattHours": float(10 * k)})


@pytest.fixture
def settings(kafka_bootstrap: str, clickhouse_url: str, ch_database: str, topic_prefix: str, pg_dsn: str):  # type: ignore[no-untyped-def]
    s = settings_for(kafka_bootstrap, clickhouse_url, ch_database, topic_prefix, postgres_dsn=pg_dsn)
    client = connect(s.clickhouse_url)
    ensure_schema(client)
    ensure_rollup_schema(client)
    return s, client


def test_a_datum_that_made_the_rate_lookup_throw_no_longer_loses_its_batch(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Before: a negative nodeId with an accumulating sample made the rate-baseline query fail
    (ClickHouse refused the UInt64 parameter) before the envelope rules ran; the agent crashed and
    the batch it held was dropped: 0 of the good datums stored, no dead letter."""
    s, client = settings
    producer = DatumProducer(s)
    source = "/R1/meter"
    topic = producer.topics.source(source)
    good = [meter(1, source, k) for k in range(200)]
    # the bad datum rides in the same message as good ones, and messages follow it
    bad = Datum(-5, source, BASE_MS, {"watts": 1.0}, a={"wattHours": 3.0})
    producer.send_encoded(
        topic,
        stream_key(1, source),
        encode_batch(good[:50] + [bad] + good[50:100]),
        101,
        headers=[(SCHEMA_HEADER, CURRENT.encode())],
    )
    producer.send(good[100:])
    producer.flush()
    with worker_process(s, tmp_path / "worker.log"):
        wait_for(lambda: distinct_datums(client) == 200, 120, "every good datum stored")
        letters = read_topic(s.kafka_bootstrap, producer.topics.deadletter, 1, timeout=60)
    assert [r["rule"] for x in letters for r in x["reasons"]] == ["node_id.negative"]
    assert letters[0]["datum"]["nodeId"] == -5
    assert int(client.command("SELECT count() FROM datum")) == 400
    # the refusal is kept in the store too (the embedded broker keeps nothing), under the letter's id
    kept = client.query("SELECT id, rules, letter FROM dead_letter").result_rows
    assert [(r[0], list(r[1])) for r in kept] == [(letters[0]["id"], ["node_id.negative"])]
    assert json.loads(kept[0][2])["datum"]["nodeId"] == -5


def test_a_dead_letter_sent_again_is_kept_once(settings) -> None:  # type: ignore[no-untyped-def]
    """A batch redelivered after a crash refuses its bad input again: same id, one row in the view."""
    from pipeline.wire.codec import DeadLetter, Origin
    from processors.datum import Rejection
    from sinks.clickhouse import DeadLetterSink

    _s, client = settings
    first = DeadLetter([Rejection("envelope.corrupt", "x")], Origin("datum..a", 0, 7), payload=b"junk", at_ms=BASE_MS)
    again = DeadLetter(
        [Rejection("envelope.corrupt", "x")], Origin("datum..a", 0, 7), payload=b"junk", at_ms=BASE_MS + 5000
    )
    other = DeadLetter([Rejection("envelope.corrupt", "x")], Origin("datum..a", 0, 8), payload=b"junk", at_ms=BASE_MS)
    assert first.letter_id == again.letter_id != other.letter_id
    for letter in (first, again, other):
        DeadLetterSink(client).write(
            [
                (
                    letter.letter_id,
                    letter.at_ms,
                    letter.stage,
                    ["envelope.corrupt"],
                    "datum..a",
                    0,
                    letter.origin.offset if letter.origin else -1,
                    letter.to_json(),
                )
            ]
        )
    assert int(client.command("SELECT count() FROM dead_letter")) == 2


def test_ingest_reports_taken_only_what_the_pipeline_stored(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`pipeline ingest` used to report datums "sent" once the broker had them: a crash of the
    embedded broker then lost them. Now its report counts what the workers committed (stored or
    dead-lettered), and says what was not confirmed."""
    s, client = settings
    path = tmp_path / "in.jsonl"
    with path.open("w") as fh:
        for k in range(500):
            d = meter(2, f"/R2/m{k % 3}", k)
            fh.write(
                json.dumps(
                    {
                        "nodeId": d.node_id,
                        "sourceId": d.source_id,
                        "created": d.created_ms,
                        "samples": {"i": dict(d.i), "a": dict(d.a)},
                    }
                )
                + "\n"
            )
        # a meter reset (an auxiliary record): confirmed like the datums (it was only sent before)
        reset = {"nodeId": 2, "sourceId": "/R2/m0", "type": "Reset", "created": meter(2, "/R2/m0", 250).created_ms}
        fh.write(json.dumps({**reset, "final": {"a": {"wattHours": 9.0}}, "start": {"a": {"wattHours": 0.0}}}) + "\n")
        # a refused line: its dead letter is kept in the store (it was only on the topic before)
        fh.write('{"nodeId": 2, "sourceId": "/R2/m0", "created": \n')
    # negative control: nobody consumes, so nothing is confirmed and the report says so
    quick = s._with({"confirm_timeout_s": 3})
    lonely = ingest_files(quick, [path], "json", confirm=True)
    assert (lonely.datums_sent, lonely.datums_confirmed, lonely.datums_unconfirmed) == (500, 0, 500)
    assert (lonely.auxiliary_sent, lonely.auxiliary_unconfirmed) == (1, 1)
    assert (lonely.lines_rejected, lonely.letters_sent, lonely.letters_unconfirmed) == (1, 1, 1)
    assert "NOT CONFIRMED 500" in lonely.summary()
    assert "auxiliary records NOT CONFIRMED 1 of 1" in lonely.summary()
    assert "dead letters NOT CONFIRMED 1 of 1" in lonely.summary()
    with worker_process(s, tmp_path / "worker.log"):
        report = ingest_files(s._with({"confirm_timeout_s": 120}), [path], "json", confirm=True)
    assert (report.datums_sent, report.datums_confirmed, report.datums_unconfirmed) == (500, 500, 0)
    assert (report.auxiliary_sent, report.auxiliary_unconfirmed) == (1, 0)
    assert (report.letters_sent, report.letters_unconfirmed) == (1, 0)
    assert distinct_datums(client) == 500  # confirmed means queryable already
    assert int(client.command("SELECT count() FROM datum_auxiliary WHERE node_id = 2")) == 1
    # both runs refused the same line: one refusal, kept once (the letter's id is where it was read)
    kept = client.query("SELECT stage, rules FROM dead_letter").result_rows
    assert kept == [("ingest", ["json.syntax"])], kept


def test_producer_confirmation_tracks_identities(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s, _client = settings
    producer = DatumProducer(s, track=True)
    sent = [meter(3, "/R3/m", k) for k in range(50)]
    producer.send(sent)
    with worker_process(s, tmp_path / "worker.log"):
        outcome = producer.confirm(120)
    assert outcome.complete and outcome.confirmed == {(3, "/R3/m", d.created_ms) for d in sent}
    assert producer.delivered_identities() == outcome.confirmed


def test_rollups_missing_for_stored_rows_are_repaired_at_start(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Stale marks live on the broker: a crash of the embedded broker lost them and the stored
    rows never got rollups. A worker that starts now re-marks what the rollup ledger lacks."""
    s, client = settings
    rows = RawColumns()
    for k in range(0, 7200, 60):  # two hours of a meter, stored as a worker would, marks lost
        d = meter(4, "/R4/m", k)
        for kind, name, val in d.samples():
            rows.add(d, kind, name, val)
    RawSink(client).write(rows, inserted_ms=int(time.time() * 1000))
    assert len(not_rolled_up(client)) == 1
    hours = "SELECT count() FROM rollup WHERE periodicity = 'hour' AND node_id = 4"
    assert int(client.command(hours)) == 0
    with worker_process(s, tmp_path / "worker.log"):
        # 22:13:20 plus two hours touches three hours, of two properties
        wait_for(lambda: int(client.command(hours)) == 6, 120, "hourly rollups of both properties")
        wait_for(lambda: not not_rolled_up(client), 60, "the ledger listing the batch")
    # the repair computed what the normal path would: the meter's energy over the two hours
    total = client.command(
        "SELECT sum(diff) FROM rollup WHERE periodicity = 'hour' AND node_id = 4 AND property = 'wattHours'"
    )
    assert round(float(total), 6) == 10.0 * 7140


def test_ledger_marks_only_what_it_names(settings) -> None:  # type: ignore[no-untyped-def]
    s, client = settings
    now = int(time.time() * 1000)
    for stamp, node in ((now, 5), (now + 1, 6)):
        rows = RawColumns()
        rows.add(meter(node, "/R5/m", 1), "i", "watts", 1.0)
        RawSink(client).write(rows, inserted_ms=stamp)
    assert {(n, t) for n, _s, t, _c in not_rolled_up(client)} == {(5, now), (6, now + 1)}
    mark_rolled_up(client, [(5, "/R5/m", now)])
    assert [(n, t) for n, _s, t, _c in not_rolled_up(client)] == [(6, now + 1)]


def test_metadata_is_never_acked_unapplied_while_postgres_is_down(
    kafka_bootstrap: str, clickhouse_url: str, ch_database: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Before: a worker started with PostgreSQL down crash-looped, and each crash acknowledged one
    metadata event without applying it (datamodels gone for good). Now it waits, says so, and
    applies every event once PostgreSQL is back."""
    pg_dir = tmp_path / "pg"
    pg = stack.start_postgres(pg_dir)
    dsn = pg.url
    port = int(dsn.rsplit(":", 1)[1].split("/")[0])
    pg.stop()  # down before the worker starts
    s = settings_for(kafka_bootstrap, clickhouse_url, ch_database, topic_prefix, postgres_dsn=dsn)
    events = [metadata_event("node", {"node_id": n}, "upsert", {"name": f"node {n}"}) for n in range(1, 5)]
    publish_metadata(s, events)
    log = tmp_path / "worker.log"
    with worker_process(s, log) as proc:
        wait_for(lambda: "waiting for PostgreSQL" in log.read_text(errors="replace"), 60, "the worker saying it waits")
        time.sleep(3)
        assert proc.poll() is None, "the worker died instead of waiting"
        pg = stack.start_postgres(pg_dir, port)
        try:

            def applied() -> int:
                try:
                    with psycopg.connect(dsn, autocommit=True) as conn:
                        row = conn.execute(
                            "SELECT count(*) FROM history.transactions WHERE status = 'applied'"
                        ).fetchone()
                        return int(row[0]) if row else 0
                except psycopg.Error:
                    return 0

            wait_for(lambda: applied() == 4, 120, "all 4 metadata events applied")
        finally:
            pg.stop()


def test_cli_ingest_exit_code_says_unconfirmed(settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    s, _client = settings
    path = tmp_path / "one.jsonl"
    path.write_text(
        json.dumps({"nodeId": 9, "sourceId": "/R9/m", "created": BASE_MS, "samples": {"i": {"w": 1.0}}}) + "\n"
    )
    for key, value in s._with({"confirm_timeout_s": 2}).as_env().items():
        monkeypatch.setenv(key, value)
    assert cli.main(["ingest", str(path)]) == 1  # no worker: not confirmed
    assert cli.main(["ingest", "--no-confirm", str(path)]) == 0


def test_rate_baselines_of_many_streams_in_one_query_equal_one_by_one(settings) -> None:  # type: ignore[no-untyped-def]
    """A fleet's first batch names thousands of streams: their baselines come in one query, each
    stream before its own time, equal to the one-stream lookup."""
    from sinks.clickhouse import rate_baselines, rate_baselines_many

    _s, client = settings
    rows = RawColumns()
    for node, source in ((7, "/F/a"), (7, "/F/b"), (8, "/F/a"), (9, "/F/quote's")):
        for k in range(5):
            d = meter(node, source, k)
            rows.add(d, "a", "wattHours", 10.0 * k + node, "energy")
            rows.add(d, "i", "watts", float(k), "power")
    RawSink(client).write(rows)
    firsts = {
        (7, "/F/a"): BASE_MS + 3000,
        (7, "/F/b"): BASE_MS + 10_000,
        (8, "/F/a"): BASE_MS,
        (9, "/F/quote's"): BASE_MS + 1500,
        (10, "/F/none"): BASE_MS + 9000,
    }
    many = rate_baselines_many(client, firsts, chunk=2)
    assert many == {k: rate_baselines(client, k[0], k[1], before) for k, before in firsts.items()}
    assert many[(7, "/F/a")] == [("energy", BASE_MS + 2000, 27.0)] and many[(8, "/F/a")] == []
