import re

from hypothesis import given
from hypothesis import strategies as st

from pipeline.wire.topics import Topics, decode_source, encode_source, stream_key

LEGAL = re.compile(r"^[A-Za-z0-9._-]+$")
source_ids = st.text(min_size=1, max_size=64)


@given(source_ids)
def test_round_trip(source_id: str) -> None:
    assert decode_source(encode_source(source_id)) == source_id


@given(source_ids, source_ids)
def test_collision_free(a: str, b: str) -> None:
    if a != b:
        assert encode_source(a) != encode_source(b)


@given(source_ids)
def test_topic_names_are_legal_and_short(source_id: str) -> None:
    name = Topics("p.").source(source_id)
    assert LEGAL.match(name)
    assert len(name) <= 249
    assert "_" not in name  # no '.'/'_' metric-name collisions possible
    assert Topics("p.").source_pattern.match(name)
    if "--" not in name:
        assert Topics("p.").source_id_of(name) == source_id


@given(source_ids, source_ids)
def test_topic_names_collision_free_including_hashed(a: str, b: str) -> None:
    if a != b:
        assert Topics().source(a) != Topics().source(b)


def test_long_non_ascii_source_is_hashed_not_truncated() -> None:
    long = "\U0001f600" * 64
    name = Topics().source(long)
    assert name.startswith("datum.--") and len(name) == len("datum.--") + 64
    assert Topics().source_id_of(name) is None
    assert Topics().source("\U0001f600" * 63) != name


def test_readable_paths() -> None:
    assert Topics().source("/S1/B1/M1") == "datum..S1.B1.M1"
    assert Topics().source("Meter_1.a") == "datum.Meter-5F1-2Ea"
    assert Topics().source("/S1/B1/M1") != Topics().source(".S1.B1.M1")


def test_pattern_excludes_other_deployments() -> None:
    assert not Topics("a.").source_pattern.match(Topics("b.").source("/S1"))
    assert not Topics().source_pattern.match(Topics().deadletter)


def test_stream_key_distinguishes_streams() -> None:
    assert stream_key(1, "/S1") != stream_key(11, "/S1")
    assert stream_key(1, "/S1") == stream_key(1, "/S1")


def test_metadata_and_dead_letters_keep_one_partition() -> None:
    t = Topics("p.")
    assert t.partitions(t.metadata, 8) == 1 and t.partitions(t.deadletter, 8) == 1
    assert t.partitions(t.source("/S1"), 8) == 8
