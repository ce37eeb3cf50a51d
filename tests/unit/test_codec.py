import base64
import hashlib
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.wire.codec import (
    DATUM_BATCH_V1,
    DEAD_LETTER_MAX_BYTES,
    MIN_DEAD_LETTER_BYTES,
    DeadLetter,
    DecodeError,
    Origin,
    decode_batch,
    encode_batch,
    letter_row,
    read_letter_row,
)
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


# --- dead letters fit in a Kafka message ------------------------------------------------------


def check_letter(letter: DeadLetter, limit: int) -> dict[str, object]:
    out = letter.to_json(max_bytes=limit)
    assert len(out) <= limit
    doc: dict[str, object] = json.loads(out)
    if letter.payload is not None:
        assert doc["payload_bytes"] == len(letter.payload)
        assert doc["payload_sha256"] == hashlib.sha256(letter.payload).hexdigest()
        if "payload_base64" in doc:
            kept = base64.b64decode(str(doc["payload_base64"]))
            assert letter.payload.startswith(kept)
            assert (len(kept) < len(letter.payload)) == bool(doc.get("payload_truncated", False))
    return doc


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 300_000), limit=st.integers(MIN_DEAD_LETTER_BYTES, 200_000), seed=st.binary(max_size=8))
def test_a_corrupt_message_of_any_size_makes_a_letter_within_the_limit(size: int, limit: int, seed: bytes) -> None:
    payload = (hashlib.sha256(seed).digest() * (size // 32 + 1))[:size]
    doc = check_letter(
        DeadLetter([Rejection("envelope.corrupt", "not a datum batch")], Origin("t", 0, 5), payload=payload), limit
    )
    if size <= limit // 2:  # small letters are whole
        assert base64.b64decode(str(doc["payload_base64"])) == payload and "payload_truncated" not in doc


@settings(max_examples=60, deadline=None)
@given(
    payload=st.none() | st.binary(max_size=50_000),
    text=st.none() | st.text(max_size=20_000),
    source=st.text(max_size=3_000),
    samples=st.dictionaries(st.text(max_size=30), st.floats(), max_size=300),
    reasons=st.lists(st.tuples(st.text(max_size=40), st.text(max_size=3_000)), max_size=60),
    limit=st.integers(MIN_DEAD_LETTER_BYTES, 40_000),
)
def test_every_part_of_a_letter_is_cut_to_the_limit(
    payload: bytes | None,
    text: str | None,
    source: str,
    samples: dict[str, float],
    reasons: list[tuple[str, str]],
    limit: int,
) -> None:
    datum = Datum(2**63 - 1, source, 10**30, samples, {}, {"m": source}, (source,))
    letter = DeadLetter(
        [Rejection(rule, msg, "p", "i", msg) for rule, msg in reasons],
        Origin("t" * 249, 3, 9),
        payload=payload,
        datum=datum,
        stage="ingest",
        file="/f" * 600,
        line=7,
        text=text,
    )
    doc = check_letter(letter, limit)
    if text is not None and "text_sha256" in doc:
        assert doc["text_sha256"] == hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def test_the_issue_case_a_79_mb_corrupt_message() -> None:
    """7.9 MB of garbage made a 10.5 MB letter; the broker takes 8 MiB."""
    payload = bytes(range(256)) * (7_900_000 // 256)
    letter = DeadLetter([Rejection("envelope.corrupt", "not a datum batch")], Origin("datum.S", 1, 2), payload=payload)
    assert len(letter.to_json(max_bytes=2**62)) > 10_000_000  # uncapped, as before
    out = letter.to_json(max_bytes=8 * 1024 * 1024 // 2)
    assert len(out) <= 4 * 1024 * 1024 and len(letter.to_json()) <= DEAD_LETTER_MAX_BYTES
    doc = json.loads(out)
    assert doc["payload_truncated"] is True and doc["payload_bytes"] == len(payload)
    assert doc["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert len(base64.b64decode(doc["payload_base64"])) > 3_000_000  # most of what fits is kept
    with pytest.raises(ValueError):
        letter.to_json(max_bytes=100)


def test_a_letter_with_its_datum_cut_is_not_replayed_as_a_datum() -> None:
    from pipeline.gateway.replay import letter_datum

    big = Datum(1, "/S", 5, {f"p{k}": float(k) for k in range(20_000)})
    letter = DeadLetter([Rejection("internal.validation", "x")], None, datum=big)
    whole, cut = json.loads(letter.to_json()), json.loads(letter.to_json(max_bytes=64_000))
    assert letter_datum(whole) == big and cut["datum"]["truncated"] is True
    assert letter_datum(cut) is None  # before: replayed as a datum without samples


def test_a_refused_datum_is_one_refusal_whichever_message_carried_it() -> None:
    """A producer told "not taken" (its broker lost before the commit) resends; the second refusal of
    the same datum has the same id, so the store keeps one letter. Messages are told apart by origin."""
    from pipeline.wire.codec import DeadLetter, Origin
    from processors.datum import Datum, Rejection

    old = Datum(1, "/S1/B1/M1", 915_148_800_000, {"watts": 1.0})
    why = [Rejection("created.too_old", "before 2000")]
    first = DeadLetter(why, Origin("datum..S1.B1.M1", 1, 2), datum=old, at_ms=1)
    resent = DeadLetter(why, Origin("datum..S1.B1.M1", 1, 0), datum=old, at_ms=2)
    changed = DeadLetter(
        why, Origin("datum..S1.B1.M1", 1, 0), datum=Datum(1, "/S1/B1/M1", 915_148_800_000, {"watts": 2.0}), at_ms=2
    )
    assert first.letter_id == resent.letter_id != changed.letter_id
    corrupt = DeadLetter([Rejection("envelope.corrupt", "x")], Origin("t", 0, 1), payload=b"junk")
    elsewhere = DeadLetter([Rejection("envelope.corrupt", "x")], Origin("t", 0, 2), payload=b"junk")
    assert corrupt.letter_id != elsewhere.letter_id


rules = st.sampled_from(["envelope.corrupt", "sample.non_finite", "datum.too_old", "lp.syntax", "json.invalid"])


@given(
    why=st.lists(rules, min_size=1, max_size=4),
    origin=st.none() | st.builds(Origin, st.text(max_size=20), st.integers(0, 64), st.integers(0, 2**40)),
    stage=st.sampled_from(["ingest", "envelope", "validation"]),
    text=st.none() | st.text(max_size=200),
    datum=st.none() | datums,
    at=st.integers(0, 2**45),
)
def test_a_letter_read_back_from_the_topic_is_the_row_its_sender_keeps(
    why: list[str], origin: Origin | None, stage: str, text: str | None, datum: Datum | None, at: int
) -> None:
    letter = DeadLetter(
        [Rejection(r, "because") for r in why],
        origin,
        datum=datum,
        stage=stage,
        file="f.jsonl",
        line=3,
        text=text,
        at_ms=at,
    )
    body = letter.to_json()
    kept = letter_row(letter.letter_id, at, stage, why, origin, body)
    assert read_letter_row(body, Origin("deadletter", 0, 9), now_ms=1) == kept


@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_anything_on_the_letter_topic_is_kept_even_when_no_letter(body: bytes) -> None:
    row = read_letter_row(body, Origin("deadletter", 1, 7), now_ms=5)
    assert row[-1] == body  # kept whole, never dropped
    if row[3] == ["letter.unreadable"]:
        assert row[:3] == (hashlib.sha256(body).hexdigest()[:32], 5, "deadletter")
        assert row[4:7] == ("deadletter", 1, 7)


def test_a_letter_with_the_wrong_shape_is_kept_as_unreadable() -> None:
    for doc in ({"id": "x"}, {"id": 5, "at": 1, "stage": "ingest", "reasons": [], "origin": None}, [1, 2]):
        body = json.dumps(doc).encode()
        assert read_letter_row(body, Origin("d", 0, 1), now_ms=2)[3] == ["letter.unreadable"]
