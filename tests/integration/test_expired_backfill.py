"""A backfill already past its datastreams' storage periods (issue 12): the datums are accepted
and counted as expired, their rollups are computed and kept, their raw rows go after the grace
period, and a later recompute over the expired range erases nothing. Real services, the sample
datamodels bound."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.gateway.replay import replay_store
from pipeline.history.events import datamodel_events
from pipeline.settings import Settings
from pipeline.wire.producer import DatumProducer
from pipeline.worker.rollups import RollupMaintainer, recompute_range
from processors.binding import load_catalog
from processors.datum import Datum
from processors.rows import DAY_MS, accept_batch, count_expired
from processors.simulate import Fleet, FleetSpec
from sinks.clickhouse import RAW_GRACE_DAYS, RAW_TABLE, RAW_TTL, RawSink, connect, ensure_schema
from sinks.rollups import COMBINE_BUCKETS, ROLLUP_TABLE, ensure_rollup_schema
from tests.integration.helpers import (
    ROOT,
    publish_metadata,
    settings_in_env,
    wait_for,
    wait_for_catalog,
    worker_process,
)

pytestmark = pytest.mark.integration

SAMPLES = ROOT / "schemas" / "datamodels"
START = 1_685_577_600_000  # 2023-06-01T00:00Z: past the 90-day, 13-month and 2-year periods, not the 5-year
HOUR = 3_600_000
SNAPSHOT = (
    "SELECT periodicity, node_id, source_id, property, toUnixTimestamp64Milli(ts_start), count, avg, diff"
    " FROM rollup ORDER BY 1, 2, 3, 4, 5"
)


def _num(client: Any, sql: str) -> int:
    try:
        return int(client.command(sql))
    except Exception:  # the views appear once the worker has created the schema
        return -1


def test_backfill_past_its_storage_period_keeps_rollups_and_expires_raw(
    worker_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = worker_settings
    client = settings_in_env(settings, monkeypatch)
    ensure_rollup_schema(client)
    catalog = load_catalog(SAMPLES)
    pulse = catalog.pulse_datastreams()
    spec = FleetSpec(nodes=1, interval_s=300, seed=11, start_ms=START)
    datums: list[Datum] = list(Fleet(spec).datums_between(START, START + 3 * HOUR))
    now_ms = int(time.time() * 1000)
    expected = count_expired(datums, catalog, now_ms)
    accepted = accept_batch(datums, now_ms, catalog)
    rows = len(accepted.rows)
    assert (accepted.samples_expired, accepted.datums_expired) == (expected.samples, expected.datums)
    assert 0 < expected.datums < len(datums)  # the heat pump's 5-year datastreams are still in their period
    i_rows = sum(
        1 for k, ds in zip(accepted.rows.kind, accepted.rows.datastream, strict=True) if k == "i" and ds not in pulse
    )
    log = tmp_path / "worker.log"

    with worker_process(settings, log) as worker:
        events = datamodel_events(sorted(SAMPLES.glob("*.json")), "test", "sample datamodels")
        publish_metadata(settings, events)
        wait_for_catalog(settings.postgres_dsn, len(events), log)
        producer = DatumProducer(settings)
        assert producer.send(datums) == len(datums)
        producer.flush()

        def alive(check: Any) -> Any:
            def probe() -> Any:
                assert worker.poll() is None, log.read_text()[-3000:]
                return check()

            return probe

        wait_for(
            alive(lambda: _num(client, "SELECT count() FROM datum") == rows),
            120,
            f"{rows} raw rows stored, expired ones included",
        )
        # every instantaneous reading counted once in its half hour, and once in its year
        for per in ("halfhour", "year"):
            wait_for(
                alive(
                    lambda per=per: (
                        _num(client, f"SELECT sum(count) FROM rollup WHERE periodicity = '{per}' AND kind = 'i'")
                        == i_rows
                    )
                ),
                180,
                f"{per} rollups of all {i_rows} instantaneous readings",
            )
        # the replay report says how many are already expired (catalog from the history log)
        report = replay_store(settings, START, START + 3 * HOUR)
        assert report.datums_sent == len(datums)
        assert (report.datums_expired, report.samples_expired) == (expected.datums, expected.samples)
        assert "already past their storage period" in report.summary()
        wait_for(
            alive(
                lambda: (
                    _num(
                        client,
                        f"SELECT count() FROM {RAW_TABLE} WHERE inserted > fromUnixTimestamp64Milli({now_ms}, 'UTC')",
                    )
                    >= rows
                )
            ),
            60,
            "the replayed rows stored",
        )
    assert "Traceback" not in log.read_text()

    # The raw table's TTL keeps expired rows for the grace period after their insert...
    engine = str(
        client.command(
            f"SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = '{RAW_TABLE}'"
        )
    )
    assert "".join(RAW_TTL.split()) in "".join(engine.split())
    client.command(f"OPTIMIZE TABLE {RAW_TABLE} FINAL")
    client.command(f"OPTIMIZE TABLE {ROLLUP_TABLE} FINAL")
    assert _num(client, f"SELECT count() FROM {RAW_TABLE}") == rows
    before = client.query(SNAPSHOT).result_rows
    assert before

    # ...and they go once it is over: the table as it will be RAW_GRACE_DAYS + 1 days later
    client.command(f"CREATE TABLE aged AS {RAW_TABLE}")
    client.command(
        f"INSERT INTO aged SELECT * REPLACE (inserted - toIntervalDay({RAW_GRACE_DAYS + 1}) AS inserted)"
        f" FROM {RAW_TABLE}"
    )
    client.command(f"TRUNCATE TABLE {RAW_TABLE}")
    client.command(f"INSERT INTO {RAW_TABLE} SELECT * FROM aged")
    client.command(f"OPTIMIZE TABLE {RAW_TABLE} FINAL")
    assert _num(client, f"SELECT count() FROM {RAW_TABLE}") == rows - expected.samples
    assert (
        _num(
            client,
            f"SELECT count() FROM {RAW_TABLE} WHERE ttl_days > 0 AND"
            f" toUnixTimestamp64Milli(created) + ttl_days * {DAY_MS} <= {now_ms}",
        )
        == 0
    )
    client.command(f"OPTIMIZE TABLE {ROLLUP_TABLE} FINAL")
    assert client.query(SNAPSHOT).result_rows == before  # rollups outlive their raw rows

    # A late datum in an expired half hour, then a full recompute: nothing shrinks or goes.
    late = Datum(1, "/S1/B1/M1", START + 10 * 60_000 + 1, {"watts": 1.0}, {}, {}, ())
    late_rows = accept_batch([late], now_ms, catalog).rows
    assert len(late_rows) == 1 and late_rows.ttl_days == [90]
    RawSink(client).write(late_rows)
    # with the cascade in the worker (few buckets), and in the store (a fleet's step, whose stored
    # half hours are first read as keys only)
    for combine_buckets in (COMBINE_BUCKETS, 0):
        maintainer = RollupMaintainer(
            client, lambda node, ms: "UTC", pulse=lambda: pulse, combine_buckets=combine_buckets
        )
        maintainer.update(late_rows)
        assert maintainer.kept_expired > 0, combine_buckets
    for node, source in {(d.node_id, d.source_id) for d in datums}:
        recompute_range(client, node, source, START - HOUR, START + 4 * HOUR, lambda node, ms: "UTC", pulse=pulse)
    client.command(f"OPTIMIZE TABLE {ROLLUP_TABLE} FINAL")
    assert client.query(SNAPSHOT).result_rows == before


OLD_TTL = "toDateTime(created) + toIntervalDay(ttl_days) WHERE ttl_days > 0"


def test_raw_table_of_an_older_version_gets_the_grace_period_once(clickhouse_url: str, ch_database: str) -> None:
    from sinks.clickhouse import SCHEMA, migrate_raw_ttl

    client = connect(f"{clickhouse_url.rstrip('/')}/{ch_database}")
    client.command(SCHEMA[0].replace(f"TTL {RAW_TTL}", f"TTL {OLD_TTL}"))  # as the previous version made it
    ensure_schema(client)  # every start
    engine = "".join(
        str(
            client.command(
                f"SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = '{RAW_TABLE}'"
            )
        ).split()
    )
    assert "".join(RAW_TTL.split()) in engine
    # a row past its period on arrival: the old TTL dropped it on insert, now it stays its grace period
    client.command(
        f"INSERT INTO {RAW_TABLE} (node_id, source_id, created, property, kind, value, ttl_days)"
        " VALUES (1, '/s', '2023-01-01 00:00:00', 'p', 'i', 1, 90)"
    )
    client.command(f"OPTIMIZE TABLE {RAW_TABLE} FINAL")
    assert _num(client, f"SELECT count() FROM {RAW_TABLE}") == 1
    assert migrate_raw_ttl(client) is False  # the next start changes nothing
