"""A stream's stale marks go to the partition the producer gives its key (pipeline/worker/faust_fixes.py
13.): `KeyHashes` keeps each key's hash and must place every key where aiokafka's own
DefaultPartitioner does, for any key and any partitions; `stale_partitioner` reads the topic's
partitions once from the producer's metadata, and places nothing without them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.worker.faust_fixes import KeyHashes, stale_partitioner


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=30),
    st.lists(st.integers(0, 200), min_size=1, max_size=12, unique=True),
)
def test_a_kept_hash_places_a_key_where_aiokafka_does(keys: list[bytes], partitions: list[int]) -> None:
    hashes = KeyHashes(limit=7)  # forgets and hashes again along the way
    for key in keys + keys:
        assert hashes.partition(key, partitions) == DefaultPartitioner()(key, partitions, partitions)


def fake_app(known: set[int] | None) -> Any:
    metadata = SimpleNamespace(partitions_for_topic=lambda topic: known if topic == "stale" else None)
    producer = SimpleNamespace(_metadata=metadata)
    return SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: producer))


def test_the_partitioner_reads_the_topics_partitions_and_places_nothing_without_them() -> None:
    hashes = KeyHashes()
    of = stale_partitioner(fake_app({0, 1, 2, 3, 4}), "stale", hashes)
    for k in range(50):
        key = f"{k}\x1f/S1".encode()
        assert of(key) == DefaultPartitioner()(key, [0, 1, 2, 3, 4], [0, 1, 2, 3, 4])
    assert stale_partitioner(fake_app(None), "stale", hashes)(b"1\x1f/S1") is None
    assert stale_partitioner(fake_app({0}), "other", hashes)(b"1\x1f/S1") is None

    def not_started() -> Any:
        raise RuntimeError("producer not started")

    no_producer = SimpleNamespace(producer=SimpleNamespace(_ensure_producer=not_started))
    assert stale_partitioner(no_producer, "stale", hashes)(b"1\x1f/S1") is None
