"""A bundle of streams goes to the partition each of its streams' keyed messages goes to.

`DatumProducer.send` places the datums of many streams in one message per partition, choosing
the partition itself (`key_partition`: librdkafka's default partitioner over the stream's key).
Anything else that produces a stream's datums keyed (`send_encoded`: replays, drills; a producer of
an earlier version) lets librdkafka choose: if the two disagreed, a stream would span two
partitions, out of order and between two workers. Both are produced here to a real broker and
their partitions compared, stream by stream.
"""

from __future__ import annotations

import pytest

from pipeline.wire.codec import encode_batch
from pipeline.wire.producer import DatumProducer
from pipeline.wire.topics import stream_key
from processors.datum import Datum
from tests.integration.helpers import settings_for, stream_positions

pytestmark = pytest.mark.integration

BASE_MS = 1_700_000_000_000


def test_bundled_and_keyed_messages_of_a_stream_share_its_partition(
    kafka_bootstrap: str, clickhouse_url: str, ch_database: str, topic_prefix: str
) -> None:
    settings = settings_for(kafka_bootstrap, clickhouse_url, ch_database, topic_prefix, topic_partitions=5)
    producer = DatumProducer(settings, track=True)
    nodes = range(1, 301)
    # first keyed, a message per stream, the partitioner choosing
    topic = producer.topics.source("/fleet/M1")
    producer.admin.ensure([topic])
    for node in nodes:
        d = Datum(node, "/fleet/M1", BASE_MS, {"watts": 1.0})
        producer.send_encoded(topic, stream_key(node, "/fleet/M1"), encode_batch([d]), 1)
    producer.flush()
    keyed_messages = producer.messages_sent
    # then bundled: every stream's next two datums in one send
    producer.send([Datum(node, "/fleet/M1", BASE_MS + k * 60_000, {"watts": 2.0}) for k in (1, 2) for node in nodes])
    producer.flush()
    bundled_messages = producer.messages_sent - keyed_messages

    seen = stream_positions(kafka_bootstrap, topic)
    assert set(seen) == {(node, "/fleet/M1") for node in nodes}
    for stream, positions in seen.items():
        assert len(positions) == 3, stream
        assert len({p for p, _, _ in positions}) == 1, f"{stream} on two partitions: {positions}"
        # read in the order sent
        assert [c for _, _, c in positions] == [BASE_MS, BASE_MS + 60_000, BASE_MS + 120_000], stream
    # 300 streams' 600 datums as a message per partition (5), not one per stream
    assert bundled_messages == 5
    assert len({p for positions in seen.values() for p, _, _ in positions}) == 5
