"""`pipeline up` against services given by URL: it starts none of its own, runs the workers,
serves metrics, and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from pipeline.wire.producer import DatumProducer
from processors.datum import Datum
from sinks.clickhouse import connect
from tests.integration.helpers import ROOT, settings_for, wait_for

pytestmark = pytest.mark.integration


def scrape(port: int) -> bytes | None:
    try:
        body: bytes = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        return body
    except OSError:  # that worker is not serving yet
        return None


def service_logs(logs: Path, tail: int = 3000) -> str:
    """The end of every service log `pipeline up` wrote, for a failure's message."""
    return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-tail:]}" for f in sorted(logs.glob("*.log")))


def test_up_with_external_services(
    kafka_bootstrap: str, clickhouse_url: str, postgres_url: str, ch_database: str, topic_prefix: str, tmp_path: Path
) -> None:
    settings = settings_for(kafka_bootstrap, clickhouse_url, ch_database, topic_prefix)
    settings = settings._with({"postgres_dsn": postgres_url, "data_dir": tmp_path / "data"})
    env = {**os.environ, **settings.as_env()}
    out = tmp_path / "up.log"
    with out.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "up"], env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT
        )
    try:
        wait_for(lambda: "pipeline is up" in out.read_text(), 60, "the banner")
        banner = out.read_text()
        assert kafka_bootstrap in banner and settings.clickhouse_url in banner
        # nothing embedded was started: no service logs in the data dir
        assert not (tmp_path / "data" / "postgres").exists()
        assert not (tmp_path / "data" / "logs" / "tansu.log").exists()
        producer = DatumProducer(settings)
        producer.send([Datum(7, "/up/M1", 1_700_000_000_000 + k, {"w": float(k)}) for k in range(50)])
        producer.flush()
        client = connect(settings.clickhouse_url)
        wait_for(
            lambda: int(client.command("SELECT count() FROM datum WHERE node_id = 7")) == 50,
            120,
            "50 datums through pipeline up",
        )
        # Worker 0 serves on the base port once it has started: under load the other worker may
        # have stored all 50 datums before it (seen in CI: connection refused right after).
        metrics = wait_for(lambda: scrape(settings.metrics_port), 60, "worker-0's /metrics")
        assert b"pipeline_datums_in_total" in metrics
        # the time-series API it started lists the new series (docs/api.md naming rule)
        api = f"http://127.0.0.1:{settings.api_port}/api/timeseries"
        assert "api/timeseries" in banner

        def listed() -> bool:
            try:
                return b"7~.up.M1~w" in urllib.request.urlopen(api, timeout=5).read()
            except OSError:  # not listening yet
                return False

        wait_for(listed, 30, "the API listing the series")
    except (AssertionError, OSError) as exc:
        raise AssertionError(f"{exc}\n{service_logs(tmp_path / 'data' / 'logs')}") from exc
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(90)
    text = out.read_text()
    assert code == 0, text[-2000:]
    assert "pipeline: stopped" in text


def test_up_demo_validates_the_simulated_fleet(
    kafka_bootstrap: str, clickhouse_url: str, postgres_url: str, ch_database: str, topic_prefix: str, tmp_path: Path
) -> None:
    """The README's first command (`pipeline up --demo`), on the test's services: the sample
    datamodels are applied before the simulator starts, so its data arrives validated, and the
    API serves it."""
    import json

    import psycopg

    dsn_db = f"pipeline_demo_{topic_prefix.strip('.').replace('-', '_')}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{dsn_db}"')
    dsn = f"{postgres_url.rpartition('/')[0]}/{dsn_db}"
    settings = settings_for(kafka_bootstrap, clickhouse_url, ch_database, topic_prefix)
    settings = settings._with({"postgres_dsn": dsn, "data_dir": tmp_path / "data"})
    env = {**os.environ, **settings.as_env()}
    out = tmp_path / "up.log"
    with out.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "up", "--demo"],
            env=env,
            cwd=ROOT,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "pipeline is up" in out.read_text(), 180, "the banner (after the sample bindings)")
        client = connect(settings.clickhouse_url)
        wait_for(lambda: int(client.command("SELECT count() FROM datum")) > 1000, 180, "simulated data stored")
        # every stored sample of the fleet was validated against a sample datastream
        unbound = int(client.command("SELECT count() FROM datum WHERE datastream = ''"))
        assert unbound == 0, client.query("SELECT DISTINCT source_id FROM datum WHERE datastream = ''").result_rows
        api = f"http://127.0.0.1:{settings.api_port}/api/timeseries"
        meta = json.loads(urllib.request.urlopen(api, timeout=10).read())
        assert (meta["meta"]["limit"]["default"], meta["meta"]["limit"]["maximum"]) == (100, 1000)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
    assert code == 0, out.read_text()[-2000:]
