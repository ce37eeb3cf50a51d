"""The worker's start-up steps (pipeline/worker/app.py): the ClickHouse stores and their schemas are
one explicit step (setup_stores), the properties plain accessors; the metadata catch-up reads the
group's committed offset with one client for the whole wait, closed at its end."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest

import pipeline.worker.app as worker_app
from sinks.clickhouse import LATEST_TABLE
from tests.unit.worker_fakes import make_worker


class FakeConsumer:
    """confluent-kafka's Consumer, as far as the committed-offset read goes."""

    made: list[FakeConsumer] = []

    def __init__(self, config: dict[str, Any]) -> None:
        self.config, self.reads, self.closed = config, 0, False
        self.offsets = iter([1, 3, 5])  # the owner of the partition applies on
        FakeConsumer.made.append(self)

    def committed(self, tps: list[confluent_kafka.TopicPartition], timeout: float) -> list[Any]:
        assert not self.closed
        self.reads += 1
        (tp,) = tps
        return [confluent_kafka.TopicPartition(tp.topic, tp.partition, next(self.offsets))]

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def consumers(monkeypatch: pytest.MonkeyPatch) -> list[FakeConsumer]:
    FakeConsumer.made = []
    monkeypatch.setattr(confluent_kafka, "Consumer", FakeConsumer)
    monkeypatch.setattr(worker_app, "end_offsets", lambda _config, _topic, partitions: dict.fromkeys(partitions, 5))
    return FakeConsumer.made


def test_the_metadata_catch_up_polls_one_client_and_closes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, consumers: list[FakeConsumer]
) -> None:
    w = make_worker(tmp_path, monkeypatch, app_id="catch-up")
    asyncio.run(w.catch_up_metadata(timeout=10))
    assert len(consumers) == 1, "one client for the whole catch-up, not one per poll"
    (consumer,) = consumers
    assert consumer.reads == 3 and consumer.closed
    assert consumer.config["group.id"] == "catch-up" and consumer.config["enable.auto.commit"] is False


def test_a_catch_up_that_times_out_closes_its_client_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, consumers: list[FakeConsumer]
) -> None:
    w = make_worker(tmp_path, monkeypatch)
    asyncio.run(w.catch_up_metadata(timeout=0.3))  # at 1, then 3: never 5
    assert len(consumers) == 1 and consumers[0].closed


def test_events_this_worker_applied_need_no_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, consumers: list[FakeConsumer]
) -> None:
    w = make_worker(tmp_path, monkeypatch)
    w._metadata_next = 5
    asyncio.run(w.catch_up_metadata(timeout=10))
    assert consumers == []


class FakeClient:
    def __init__(self, n: int) -> None:
        self.n, self.closed = n, False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def clickhouse(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """connect and the schema steps, recorded; the first raw-schema attempt fails (ClickHouse not up yet)."""
    calls: dict[str, list[Any]] = {"connect": [], "schema": [], "rollup_schema": [], "aux_schema": []}

    def connect(_url: str) -> FakeClient:
        calls["connect"].append(client := FakeClient(len(calls["connect"])))
        return client

    def raw_setup(sink: Any) -> None:
        calls["schema"].append(sink.client)
        if len(calls["schema"]) == 1:
            raise ConnectionError("ClickHouse is starting")

    monkeypatch.setattr(worker_app, "connect", connect)
    monkeypatch.setattr(worker_app.RawSink, "setup", raw_setup)
    monkeypatch.setattr(worker_app.RollupSink, "setup", lambda sink: calls["rollup_schema"].append(sink.client))
    monkeypatch.setattr(worker_app.AuxiliarySink, "setup", lambda sink: calls["aux_schema"].append(sink.client))
    return calls


def test_the_stores_are_set_up_in_one_step_and_read_without_side_effects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clickhouse: dict[str, list[Any]]
) -> None:
    w = make_worker(tmp_path, monkeypatch, rollup_lanes=2)
    with pytest.raises(RuntimeError, match="setup_stores"):
        _ = w.sink  # not a lazy connect any more
    assert clickhouse["connect"] == []
    with pytest.raises(ConnectionError):
        w.setup_stores()
    assert clickhouse["connect"][0].closed  # the failed attempt's client is not left open
    w.setup_stores()  # the retry
    w.setup_stores()  # and once done, nothing more
    first_failed, raw, rollups, lane, aux = clickhouse["connect"]  # rollup_lanes=2: a client a lane
    assert clickhouse["schema"] == [first_failed, raw] and clickhouse["rollup_schema"] == [rollups]
    assert clickhouse["aux_schema"] == [aux]
    assert w.sink.client is raw and w.latest_sink.client is raw and w.latest_sink.table == LATEST_TABLE
    assert w.rollups.client is rollups and w.aux_client is aux
    assert [m.client for m in w.rollups.lanes] == [rollups, lane]
    assert not any(c.closed for c in clickhouse["connect"][1:])
    for _ in range(3):
        _ = (w.sink, w.latest_sink, w.rollups, w.aux_client)
    assert len(clickhouse["connect"]) == 5 and len(clickhouse["schema"]) == 2
