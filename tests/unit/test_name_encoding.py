"""The one sourceId encoding (processors/name_encoding.py) in both of its formats: topic names
(`_` escaped) and series names (`_` kept). Round trip, injectivity, canonical decoding, alphabet."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.name_encoding import SERIES, TOPIC, NameEncoding

FORMATS = {"topic": TOPIC, "series": SERIES}
# Lone surrogates included: the encoding is total (surrogatepass), as a decoded JSON text may hold one.
texts = st.text(st.characters(exclude_categories=()), max_size=40)
ALPHABET = {"topic": re.compile(r"[A-Za-z0-9.-]*"), "series": re.compile(r"[A-Za-z0-9_.-]*")}


@pytest.mark.parametrize("fmt", FORMATS)
@given(text=texts)
def test_round_trip(fmt: str, text: str) -> None:
    enc = FORMATS[fmt]
    name = enc.encode(text)
    assert ALPHABET[fmt].fullmatch(name)
    assert enc.decode(name) == text


@pytest.mark.parametrize("fmt", FORMATS)
@given(a=texts, b=texts)
def test_injective(fmt: str, a: str, b: str) -> None:
    enc = FORMATS[fmt]
    assert (enc.encode(a) == enc.encode(b)) == (a == b)


@pytest.mark.parametrize("fmt", FORMATS)
@given(name=st.text(alphabet="abAB09_.-2345CDEFcdef", max_size=16))
def test_only_canonical_names_decode(fmt: str, name: str) -> None:
    enc = FORMATS[fmt]
    try:
        text = enc.decode(name)
    except ValueError:
        return
    assert enc.encode(text) == name


def test_the_formats_differ_only_in_underscore() -> None:
    assert TOPIC.encode("/Meter_1.a b") == ".Meter-5F1-2Ea-20b"
    assert SERIES.encode("/Meter_1.a b") == ".Meter_1-2Ea-20b"
    with pytest.raises(ValueError):
        SERIES.decode("a-5Fb")  # `_` is written as itself in series names
    assert TOPIC.decode("a-5Fb") == "a_b"


@pytest.mark.parametrize("name", ["a-2F", "a-41", "a-2e", "a-C3", "a-", "a~b", "a_b"])
def test_malformed_topic_names(name: str) -> None:
    with pytest.raises(ValueError):
        TOPIC.decode(name)


@pytest.mark.parametrize("keep", ["/", ".", "-", "é", "ab"])
def test_a_format_cannot_keep_what_the_encoding_uses(keep: str) -> None:
    with pytest.raises(ValueError):
        NameEncoding(frozenset({keep}))
