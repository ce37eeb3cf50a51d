"""oTherm line protocol through `pipeline ingest --format lp` to ClickHouse and the dead-letter topic."""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path

import pytest

from pipeline.gateway.ingest import ingest_files
from sinks.clickhouse import connect, ensure_schema
from tests.integration.helpers import read_topic, settings_for, wait_for, worker_process

pytestmark = pytest.mark.integration

FIELDS = (
    "heatpump_power",
    "heatpump_aux",
    "source_supplytemp",
    "source_returntemp",
    "sourcefluid_flowrate",
    "outdoor_temperature",
    "heat_flow_rate",
    "tstat_temp",
)
LINES = int(os.environ.get("PIPELINE_TEST_LP_LINES", "50000"))
T0 = 1_700_000_000  # epoch seconds, as oTherm writes


def write_otherm(path: Path, n: int, bad_every: int) -> dict[str, int]:
    """n lines, of which every bad_every-th is broken in one of four ways; returns expected counts."""
    rnd = random.Random(7)
    equipment = [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(4)]
    expected = {"good": 0, "bad": 0, "missing_fields": 0}
    kinds = ["syntax", "no_tag", "all_missing", "bad_value"]
    with path.open("w") as fh:
        for k in range(n):
            eq = equipment[k % len(equipment)]
            ts = T0 + (k // len(equipment)) * 60
            values = {f: round(rnd.uniform(1, 5000), 2) for f in FIELDS}
            bad = k % bad_every == bad_every - 1
            if k % 97 == 5:
                values["heatpump_aux"] = -999  # oTherm's NaN: missing, not a value
                expected["missing_fields"] += not bad
            fields = ",".join(f"{f}={v}" for f, v in values.items())
            line = f"otherm-data,equipment={eq} {fields} {ts}"
            if bad:
                kind = kinds[(k // bad_every) % len(kinds)]
                expected["bad"] += 1
                line = {
                    "syntax": f"otherm-data,equipment={eq} heatpump_power= {ts}",
                    "no_tag": f"otherm-data {fields} {ts}",
                    "all_missing": f"otherm-data,equipment={eq} heatpump_power=-999,heatpump_aux=-999 {ts}",
                    "bad_value": f"otherm-data,equipment={eq} heatpump_power=12x {ts}",
                }[kind]
            else:
                expected["good"] += 1
            fh.write(line + "\n")
    return expected


def test_otherm_file_counts_are_exact(
    kafka_bootstrap: str, clickhouse_url: str, ch_database: str, topic_prefix: str, tmp_path: Path
) -> None:
    settings = settings_for(kafka_bootstrap, clickhouse_url, ch_database, topic_prefix)
    client = connect(settings.clickhouse_url)
    ensure_schema(client)
    path = tmp_path / "otherm.lp"
    expected = write_otherm(path, LINES, bad_every=500)
    report = ingest_files(settings, [path], "lp", precision="s")
    print(report.summary())
    assert report.lines_read == LINES
    assert report.lines_rejected == expected["bad"]
    assert report.datums_sent == expected["good"]
    with worker_process(settings, tmp_path / "worker.log"):
        stored = "SELECT count(DISTINCT source_id, created) FROM datum"
        wait_for(lambda: int(client.command(stored)) == expected["good"], 300, f"{expected['good']} datums")
    rows = int(client.command("SELECT count() FROM datum"))
    assert rows == expected["good"] * len(FIELDS) - expected["missing_fields"]
    # -999 never became a value
    assert int(client.command("SELECT count() FROM datum WHERE value = -999")) == 0
    sources = {r[0] for r in client.query("SELECT DISTINCT source_id FROM datum").result_rows}
    assert len(sources) == 4 and all(s.startswith("/otherm-data/") for s in sources)
    letters = read_topic(settings.kafka_bootstrap, f"{settings.topic_prefix}pipeline.deadletter", expected["bad"])
    assert len(letters) == expected["bad"]
    assert all(x["file"] == str(path) and x["line"] % 500 == 0 for x in letters)
    assert {x["reasons"][0]["rule"] for x in letters} == {"lp.syntax", "lp.source_tag_missing", "lp.no_samples"}
