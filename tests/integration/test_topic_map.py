"""The topic-mapping rule end to end (PIPELINE_TOPIC_MAP): many sources in a few topics, on the real
broker and ClickHouse endpoint. Every datum the producer was told is taken is stored, each stream
stays on one partition in order, and a new source of a mapped group needs neither a topic nor a
rebalance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.wire.producer import DatumProducer
from pipeline.wire.topics import Topics
from processors.datum import Datum
from sinks.clickhouse import connect, ensure_schema
from tests.integration.helpers import settings_for, stream_positions, worker_process

pytestmark = pytest.mark.integration

BASE_MS = 1_700_000_000_000
TOPIC_MAP = "/S*/** = S{1}"


def stored(client: Any) -> set[tuple[int, str, int]]:
    rows = client.query("SELECT node_id, source_id, toUnixTimestamp64Milli(created) FROM datum").result_rows
    return {(int(n), str(s), int(c)) for n, s, c in rows}


def datum_topics(producer: DatumProducer, prefix: str) -> set[str]:
    pattern = producer.topics.source_pattern
    return {t for t in producer.admin.existing() if t.startswith(prefix) and pattern.match(t)}


def test_many_sources_share_their_group_topic_and_lose_nothing(
    kafka_bootstrap: str, clickhouse_url: str, ch_database: str, topic_prefix: str, tmp_path: Path
) -> None:
    settings = settings_for(
        kafka_bootstrap,
        clickhouse_url,
        ch_database,
        topic_prefix,
        topic_map=TOPIC_MAP,
        topic_partitions=3,
        producer_batch_datums=7,  # several messages per stream: their order is what the key keeps
    )
    client = connect(settings.clickhouse_url)
    ensure_schema(client)
    producer = DatumProducer(settings, track=True)
    sources = [f"/S{s}/B{b}/M{m}" for s in (1, 2) for b in range(4) for m in range(5)] + ["/other/M1"]
    # the first datums before the worker starts: it subscribes to the topics they made
    first = [Datum(1 + k % 2, src, BASE_MS, {"watts": 1.0}, {"wattHours": 0.0}) for k, src in enumerate(sources)]
    producer.send(first)
    producer.flush()
    topics = Topics.of_settings(settings)
    expected_topics = {topics.source("/S1/x"), topics.source("/S2/x"), topics.source("/other/M1")}
    assert expected_topics == {
        f"{topic_prefix}datumgroup.S1",
        f"{topic_prefix}datumgroup.S2",
        f"{topic_prefix}datum..other.M1",
    }
    assert datum_topics(producer, topic_prefix) == expected_topics  # 41 sources, 3 topics

    with worker_process(settings, tmp_path / "worker.log"):
        for step in range(1, 30):
            producer.send(
                Datum(1 + k % 2, src, BASE_MS + step * 1000, {"watts": float(step)}, {"wattHours": float(step * 10)})
                for k, src in enumerate(sources)
            )
        taken = producer.confirm(120)
        assert taken.complete, taken.reason
        acknowledged = taken.confirmed
        assert len(acknowledged) == 30 * len(sources)
        assert stored(client) == acknowledged  # exactly what the producer was told was taken

        # a brand-new source of a mapped group: its group's topic exists, so no topic and no rebalance
        log_before = (tmp_path / "worker.log").read_text()
        producer.send([Datum(3, "/S2/B9/new", BASE_MS, {"watts": 5.0})])
        new = producer.confirm(60)
        assert new.complete, new.reason
        assert (3, "/S2/B9/new", BASE_MS) in stored(client)
        assert datum_topics(producer, topic_prefix) == expected_topics
        log_after = (tmp_path / "worker.log").read_text()[len(log_before) :]
        assert "new source topic" not in log_after

    # each stream on one partition of its group's topic, its datums in the order they were sent
    for topic in expected_topics:
        for stream, positions in stream_positions(kafka_bootstrap, topic).items():
            assert len({p for p, _, _ in positions}) == 1, f"{stream} spread over partitions in {topic}"
            assert [c for _, _, c in positions] == sorted(c for _, _, c in positions), f"{stream} out of order"
    group_s1 = stream_positions(kafka_bootstrap, f"{topic_prefix}datumgroup.S1")
    assert len(group_s1) == 20 and all(src.startswith("/S1/") for _, src in group_s1)
