"""Helpers for integration tests: run a worker process, read a topic, wait for a query."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from pipeline.embedded.stack import free_port
from pipeline.settings import ENV_PREFIX, Settings
from pipeline.wire.codec import decode_batch

if TYPE_CHECKING:
    import pytest

ROOT = Path(__file__).resolve().parents[2]


# What `settings_for` sets itself: where the services are, the names and ports of one scratch run.
SET_PER_RUN = frozenset(
    {"kafka_bootstrap", "clickhouse_url", "postgres_dsn", "topic_prefix", "app_id", "metrics_port", "api_port"}
    | {"topic_partitions", "topic_scan_interval_s"}
)


def tuning_from_env(also_set: Iterable[str] = ()) -> dict[str, str]:
    """The PIPELINE_* variables of this process for the settings a benchmark does not set itself
    (batch sizes, rollup lanes, ...), for `Settings._with`: `settings_for` starts from the
    defaults, and workers take the settings they are handed, whatever the environment says."""
    own = SET_PER_RUN | set(also_set)
    out: dict[str, str] = {}
    for f in fields(Settings):
        value = os.environ.get(ENV_PREFIX + f.name.upper(), "")
        if value and f.name not in own:
            out[f.name] = value
    if out:
        print(f"settings from the environment: {out}")
    return out


def settings_for(kafka: str, clickhouse_url: str, database: str, prefix: str, **extra: Any) -> Settings:
    base = Settings.from_env({})
    return base._with(
        {
            "kafka_bootstrap": kafka,
            "clickhouse_url": f"{clickhouse_url.rstrip('/')}/{database}",
            "topic_prefix": prefix,
            "app_id": f"{prefix}app",
            "metrics_port": free_port(),
            "api_port": free_port(),
            "topic_partitions": 2,
            "topic_scan_interval_s": 0.5,
            # Tansu answers a JoinGroup about session timeout - 1 s after it (5 s at the default
            # 10 s); Kafka's smallest allowed session (group.min.session.timeout.ms) joins in 3 s
            "session_timeout_s": 6.0,
            **extra,
        }
    )


def settings_in_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`settings` put in this process's environment (for `cli.main`, which reads it from there), and
    a ClickHouse client on their database, with the raw schema."""
    from sinks.clickhouse import connect, ensure_schema

    for name, value in settings.as_env().items():
        monkeypatch.setenv(name, value)
    client = connect(settings.clickhouse_url)
    ensure_schema(client)
    return client


def schema_client(clickhouse_url: str) -> Any:
    """A ClickHouse client on `clickhouse_url` (a URL with its database), with the raw and rollup
    schemas."""
    from sinks.clickhouse import connect, ensure_schema
    from sinks.rollups import ensure_rollup_schema

    client = connect(clickhouse_url)
    ensure_schema(client)
    ensure_rollup_schema(client)
    return client


@contextlib.contextmanager
def worker_process(settings: Settings, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, **settings.as_env()}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> bool:
    """SIGTERM, then SIGKILL after `timeout`; True if it stopped on SIGTERM (or had exited)."""
    if proc.poll() is not None:
        return True
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return False


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last={last!r}")


def read_topic(bootstrap: str, topic: str, min_count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Read JSON messages of a topic from the start, without a consumer group join."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-reader", "enable.auto.commit": False})
    deadline = time.monotonic() + timeout
    try:
        # assigning a topic that does not exist yet never recovers: wait for it first
        while True:
            meta = consumer.list_topics(timeout=10)
            if topic in meta.topics and meta.topics[topic].partitions:
                break
            if time.monotonic() > deadline:
                return []
            time.sleep(0.2)
        parts = list(meta.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        out: list[dict[str, Any]] = []
        while len(out) < min_count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            out.append(json.loads(msg.value()))
        return out
    finally:
        consumer.close()


def datum_line(node: int, source: str, created: str, **i: float) -> str:
    return json.dumps({"nodeId": node, "sourceId": source, "created": created, "samples": {"i": i}})


def wait_for_catalog(dsn: str, events: int, log_path: Path, timeout: float = 120.0) -> int:
    """Until `events` metadata events are applied to the history log and the worker whose log is
    log_path has loaded the catalog of that version (its "catalog version N" line). Returns N.

    For tests that publish metadata and then data: a worker started after the metadata was
    published can validate its first datums with only part of it. Seen with the sample
    datamodels on Tansu 0.6.0, whose high watermark is the last record batch's base offset + 1
    (three single records, then a batch of five, report 4, not 8): the worker's start-up
    catch-up ends before the last bindings are applied."""
    import psycopg

    from sinks import history

    def applied() -> int:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                row = conn.execute("SELECT count(*) FROM history.transactions WHERE status = 'applied'").fetchone()
                return history.catalog_version(conn) if row and int(row[0]) >= events else 0
        except psycopg.Error:  # not migrated yet
            return 0

    version = int(wait_for(applied, timeout, f"{events} metadata events applied", interval=0.5))
    wait_for(
        lambda: f"catalog version {version}:" in log_path.read_text(errors="replace"),
        timeout,
        f"the worker's catalog at version {version}",
    )
    return version


def publish_metadata(settings: Settings, events: list[dict[str, Any]]) -> None:
    """Metadata events to the metadata topic, as `pipeline metadata apply` sends them."""
    from pipeline.wire.producer import DatumProducer

    producer = DatumProducer(settings)
    for e in events:
        producer.send_raw(producer.topics.metadata, json.dumps(e).encode())
    producer.flush()


def model_events(folder: Path, model: dict[str, Any], bindings: dict[str, Any], comment: str) -> list[dict[str, Any]]:
    """The metadata events of one datamodel and its bindings, as from files: both are written to
    `folder` (<identifier>.json and bindings.json) and read back by `datamodel_events`."""
    from pipeline.history.events import datamodel_events

    model_path = folder / f"{model['identifier']}.json"
    model_path.write_text(json.dumps(model))
    (folder / "bindings.json").write_text(json.dumps(bindings))
    return datamodel_events([model_path, folder / "bindings.json"], "test", comment)


@contextlib.contextmanager
def scratch_stores(clickhouse_url: str, postgres_url: str, prefix: str) -> Iterator[tuple[str, str, str]]:
    """A fresh ClickHouse database and PostgreSQL database (one name) for a module, dropped
    afterwards: (the name, the ClickHouse URL with the database, the PostgreSQL DSN)."""
    import uuid

    import clickhouse_connect
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = clickhouse_connect.get_client(dsn=clickhouse_url)
    admin.command(f"CREATE DATABASE {name}")
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name, f"{clickhouse_url.rstrip('/')}/{name}", f"{postgres_url.rpartition('/')[0]}/{name}"
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {name}")
        admin.close()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def scratch_clickhouse(clickhouse_url: str, prefix: str) -> Iterator[tuple[str, Any]]:
    """A fresh ClickHouse database with the raw and rollup schemas, dropped afterwards: (its name,
    a client on it)."""
    import uuid

    import clickhouse_connect

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = clickhouse_connect.get_client(dsn=clickhouse_url)
    admin.command(f"CREATE DATABASE {name}")
    try:
        yield name, schema_client(f"{clickhouse_url.rstrip('/')}/{name}")
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {name}")
        admin.close()


def pipeline_cli(dsn: str, *args: str) -> str:
    """`pipeline ARGS...` as a process against a history log; what it printed (it must succeed)."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        env={**os.environ, "PIPELINE_POSTGRES_DSN": dsn},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout


def token_cli(dsn: str, *args: str) -> dict[str, Any]:
    """`pipeline token ARGS...` against a history log; its last line of output as JSON."""
    result: dict[str, Any] = json.loads(pipeline_cli(dsn, "token", *args).strip().splitlines()[-1])
    return result


def stream_positions(bootstrap: str, topic: str) -> dict[tuple[int, str], list[tuple[int, int, int]]]:
    """(partition, offset, created) of every datum of every stream in `topic`, in offset order."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "topic-map-reader", "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=10)
        parts = list(meta.topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        seen: dict[tuple[int, str], list[tuple[int, int, int]]] = defaultdict(list)
        done = {p for p, end in ends.items() if end == 0}
        while len(done) < len(parts):
            msg = consumer.poll(5)
            assert msg is not None, f"{topic}: fewer messages than its end offsets {ends}"
            assert not msg.error(), msg.error()
            for d in decode_batch(msg.value()):
                seen[(d.node_id, d.source_id)].append((msg.partition(), msg.offset(), d.created_ms))
            if msg.offset() + 1 >= ends[msg.partition()]:
                done.add(msg.partition())
        return seen
    finally:
        consumer.close()
