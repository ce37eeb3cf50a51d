"""How a send is cut into messages (pipeline/wire/producer.py `bundles`): every datum in exactly one
message, each stream's datums in their order and on the partition its key gives, no message over
the size, a stream's key on a message of one stream."""

from __future__ import annotations

import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.wire.codec import group_streams
from pipeline.wire.producer import bundles, key_partition
from pipeline.wire.topics import stream_key
from processors.datum import Datum

SOURCES = ["/a", "/b", "/c"]


def topic_of(source: str) -> str:
    return "t" + source  # /a and /b share nothing; a topic per source


@st.composite
def sends(draw: st.DrawFn) -> list[Datum]:
    n = draw(st.integers(0, 60))
    out = []
    for k in range(n):
        node = draw(st.integers(1, 12))
        source = draw(st.sampled_from(SOURCES))
        out.append(Datum(node, source, 1_000 + k, {"watts": float(k)}))
    return out


@settings(max_examples=200, deadline=None)
@given(
    sends(),
    st.integers(1, 7),
    st.dictionaries(st.sampled_from([topic_of(s) for s in SOURCES]), st.integers(1, 5)),
)
def test_bundles_keep_every_datum_once_each_stream_in_order_on_its_partition(
    datums: list[Datum], max_datums: int, partitions: dict[str, int]
) -> None:
    groups = group_streams(datums)
    topics = {stream: topic_of(stream[1]) for stream in groups}
    out = bundles(groups, topics, partitions, max_datums)

    seen: dict[tuple[int, str], list[Datum]] = {}
    for topic, partition, key, chunk in out:
        assert 0 < len(chunk) <= max_datums
        streams = {(d.node_id, d.source_id) for d in chunk}
        assert {topics[s] for s in streams} == {topic}
        if partition is None:  # a topic whose partition count is not known: keyed, one stream a message
            assert topic not in partitions
            assert len(streams) == 1
        else:
            assert {key_partition(stream_key(*s), partitions[topic]) for s in streams} == {partition}
        assert key == (stream_key(*next(iter(streams))) if len(streams) == 1 else None)
        for d in chunk:
            seen.setdefault((d.node_id, d.source_id), []).append(d)
    # messages of one partition are read in the order produced: each stream's datums as sent
    assert seen == groups


def test_a_fleet_send_is_a_message_per_partition_not_per_stream() -> None:
    datums = [Datum(node, "/a", 1_000, {"watts": 1.0}) for node in range(1, 2_001)]
    groups = group_streams(datums)
    out = bundles(groups, dict.fromkeys(groups, "t/a"), {"t/a": 4}, 1_000)
    # 2,000 streams over 4 partitions, at most 1,000 datums a message
    assert 4 <= len(out) <= 7
    assert sum(len(c) for *_, c in out) == 2_000


def test_key_partition_is_crc32_of_the_key() -> None:
    # librdkafka's consistent_random: CRC-32 (zlib's) of the key modulo the partitions; the
    # integration test test_producer_partitions.py checks it against the broker's placement
    assert key_partition(b"1\x1f/a", 7) == zlib.crc32(b"1\x1f/a") % 7
