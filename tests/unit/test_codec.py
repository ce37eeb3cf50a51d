import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.codec import DATUM_BATCH_V1, DeadLetter, DecodeError, Origin, decode_batch, encode_batch
from processors.datum import Datum, Rejection

names = st.text(min_size=1, max_size=20)
finite = st.floats(allow_nan=False, allow_infinity=False)
datums = st.builds(
    Datum,
    node_id=st.integers(min_value=0, max_value=2**62),
    source_id=st.text(min_size=1, max_size=64),
    created_ms=st.integers(min_value=0, max_value=2**50),
    i=st.dictionaries(names, finite, max_size=5),
    a=st.dictionaries(names, finite, max_size=5),
    s=st.dictionaries(names, st.text(max_size=30), max_size=3),
    tags=st.lists(names, max_size=3).map(tuple),
)


@given(st.lists(datums, min_size=1, max_size=20))
def test_batch_round_trip(batch: list[Datum]) -> None:
    assert decode_batch(encode_batch(batch), DATUM_BATCH_V1) == batch


def test_non_finite_survive_the_wire_for_the_envelope_rules_to_judge() -> None:
    d = Datum(1, "/S1", 1_600_000_000_000, {"x": math.nan, "y": math.inf})
    (back,) = decode_batch(encode_batch([d]), DATUM_BATCH_V1)
    assert math.isnan(back.i["x"]) and back.i["y"] == math.inf


@pytest.mark.parametrize(
    ("payload", "schema", "rule"),
    [
        (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", DATUM_BATCH_V1, "envelope.corrupt"),
        (b"", DATUM_BATCH_V1, "envelope.empty"),
        (b"\x02", None, "envelope.no_schema_header"),
        (b"\x02", "datum-batch/99", "envelope.unknown_schema"),
        (encode_batch([Datum(1, "/S", 1)]) + b"junk", DATUM_BATCH_V1, "envelope.trailing_bytes"),
    ],
)
def test_undecodable_messages_name_their_rule(payload: bytes, schema: str | None, rule: str) -> None:
    with pytest.raises(DecodeError) as err:
        decode_batch(payload, schema)
    assert err.value.rule == rule


def test_dead_letter_json_carries_reason_origin_and_bytes() -> None:
    letter = DeadLetter([Rejection("envelope.corrupt", "bad")], Origin("datum..S1", 2, 41), payload=b"\x00\xff")
    doc = json.loads(letter.to_json())
    assert doc["reasons"][0]["rule"] == "envelope.corrupt"
    assert doc["origin"] == {"topic": "datum..S1", "partition": 2, "offset": 41}
    assert doc["payload_base64"] == "AP8="


def test_dead_letter_json_spells_non_finite_values() -> None:
    d = Datum(1, "/S1", 1, {"x": math.nan})
    letter = DeadLetter([Rejection("sample.non_finite", "nan", "x", "i", math.nan)], None, datum=d)
    doc = json.loads(letter.to_json())
    assert doc["datum"]["samples"]["i"]["x"] == "nan"
    assert doc["reasons"][0]["value"] == "nan"
