"""The compiled fast paths (processors/_lpfast.c, pipeline/wire/_avrofast.c) against the pure-Python ones.

The compiled parser decodes common lines and declines the rest, which the Python parser decides; the
compiled mapping turns common lines straight into datums; the compiled encoder writes the Avro batch
envelope. Each must give exactly what the pure-Python code gives, on any input.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.wire import codec
from processors import line_protocol as lp
from processors.datum import Datum
from processors.line_protocol import LineError, Point, Unsigned, parse_lines
from processors.lp_mapping import LineProtocolMapping, LineRejection, map_lines, map_points
from tests.unit.lp_helpers import EDGE_VALUE_SPELLINGS


def test_the_extensions_are_built() -> None:
    # A clone installed with `pip install -e .` (make install) builds both; failing here means the
    # build did not, and everything else silently runs the slower pure-Python code.
    hint = "not built: run `.venv/bin/pip install -e .` (or `rm .venv/.installed && make install`)"
    assert lp.COMPILED, hint
    assert codec._avrofast is not None, hint


def outcome(results: list[Any]) -> list[object]:
    """What a caller sees, with value types (1 != 1.0 != True, -0.0 != 0.0) and line numbers."""
    out: list[object] = []
    for r in results:
        if isinstance(r, LineError):
            out.append(("error", r.line_no, r.message))
        elif isinstance(r, Point):
            fields = [(k, type(v).__name__, repr(v)) for k, v in r.fields]
            out.append(("point", r.line_no, r.measurement, r.tags, fields, r.time_ns))
        elif isinstance(r, LineRejection):
            out.append(("rejection", r.line_no, r.reason))
        else:
            assert type(r) is Datum
            samples = [(k, type(v).__name__, repr(v)) for m in (r.i, r.a, r.s) for k, v in m.items()]
            out.append(("datum", r.node_id, r.source_id, r.created_ms, samples, r.tags))
            out.append((type(r.i), type(r.a), type(r.s), list(r.i), list(r.a), list(r.s)))
    return out


def both(items: list[Any], precision: str = "ns", default: int | None = None, start: int = 1) -> list[object]:
    pure = outcome(list(parse_lines(items, precision, default, start, compiled=False)))
    fast = outcome(list(parse_lines(items, precision, default, start, compiled=True)))
    assert fast == pure, items
    return fast


def test_common_lines_and_every_value_type() -> None:
    items = [
        b"otherm-data,equipment=3fa85f64 heatpump_power=1.5,source_supplytemp=-999,stage=1 1600000000\n",
        b'm,k=v i=-5i,u=18446744073709551615u,f=1e3,s="x, y=z",b=t,B=FALSE,g=.5,h=5.,z=-0 -12\r\n',
        'm\u00e9,t\u00eag=\u00fc s="\u2603",x=1E-5'.encode(),
        "str,item=1 x=1 5",
    ]
    out = both(items, "ms", 1_234_567)
    assert [o[0] for o in out] == ["point"] * 4
    assert [o[1] for o in out] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "line",
    [
        b"m x=1.0000000000000002 1",
        b"m x=123456789012345678901234567890 1",
        b"m x=1e22,y=1e23,z=1e-22,w=1e-23",
        b"m x=4.9e-324,y=2.2250738585072014e-308,z=1.7976931348623157e308",
        b"m x=1e400",
        b"m x=1e-400",
        b"m x=0.1,y=0.2,z=0.30000000000000004,w=9007199254740993",
        b"m x=-0.0,y=-.5e-0,z=5.E+2",
        b"m x=9223372036854775807i,y=-9223372036854775808i,z=0u",
        b"m x=9223372036854775808i",
        b"m x=18446744073709551616u",
        b"m x=-1u",
        b"m x=1 9223372036854775807",
        b"m x=1 -9223372036854775808",
        b"m x=1 9223372036854775808",
        b"m x=1_0",
        b"m x=0x1p-2",
        b"m x=inf",
        b"m x=+1",
        b"m x=1 1 ",
        b"m  x=1",
        b"m x=1  1",
        b" m x=1",
        b"# c",
        b"",
        b"\n",
        b"\r\n",
        b"m x=1\r",
        b"m\\ a x=1",
        b'm s="a\\"b"',
        b'm s="tab\there"',
        b"m\tx=1",
        b"m,a=1,a=2 x=1",
        b"m,a=1,b=2 x=1",
        b"m,a= x=1",
        b"m,=a x=1",
        b"m, x=1",
        b"m,a=b=c x=1",
        b"m x=1,",
        b"m x=1,,y=2",
        b'm s="open',
        b'm s="x"y',
        b'm "k"=1,k"=2',
        b'm"x,"t"="v" f=1',
        b"m#x f=1",
        b"m=x f=1",
        b"m x=\xff",
        b"m\xff x=1",
        b'm s="\xc3"',
        b"m,k=\xc3\xa9 x=1",
        b"m x=1 1\nm y=2 2\n",
        b"m x=t,y=True,z=tru",
        b"m x=1e",
        b"m x=.",
        b"m x=-",
        b"m x=1.2.3",
        b"m x=01,y=-01i,z=00u",
    ],
)
def test_edges_agree(line: bytes) -> None:
    for precision in ("ns", "s"):
        both([line], precision)
        both([line], precision, 10**12)
    try:
        both([line.decode()])
    except UnicodeDecodeError:
        both([line.decode("utf-8", "surrogateescape")])


def test_multi_line_strings_and_line_numbers() -> None:
    items = [b"a x=1 1\n", b'b s="one\n', b"two, three\n", b'four" 2\n', b"c x=3 3\n", b"bad\n", b"d x=4"]
    out = both(items, start=10)
    assert [(o[0], o[1]) for o in out] == [("point", 10), ("point", 11), ("point", 14), ("error", 15), ("point", 16)]


def test_declined_lines_come_back_through_python_in_order() -> None:
    items = [f"m x={k} {k}\n".encode() if k % 3 else f"m\\ q x={k}i {k}\n".encode() for k in range(2000)]
    out = both(items)
    assert [o[-1] for o in out] == list(range(2000))


def test_huge_line_numbers_and_default_times_take_the_python_path() -> None:
    items = [b"m x=1\n", b"m y=2 3\n"]
    for start, default in ((2**70, None), (1, 2**70), (-(2**70), -(2**70))):
        assert outcome(list(parse_lines(items, "ns", default, start))) == outcome(
            list(parse_lines(items, "ns", default, start, compiled=False))
        )
        mapping = LineProtocolMapping(node_id=1, default_source_tag="k")
        assert outcome(list(map_lines(items, mapping, "ns", default, start))) == outcome(
            list(map_points(parse_lines(items, "ns", default, start, compiled=False), mapping))
        )


def test_unsigned_type_is_kept() -> None:
    (p,) = parse_lines([b"m u=5u"], compiled=True)
    assert isinstance(p, Point) and type(p.fields[0][1]) is Unsigned


# ---------------------------------------------------------------------------------------------
# Hypothesis: generated lines, through both paths

KEY_CHARS = 'abcXYZ019_-.#=,\\ "+\t\u00e9\u2603'
key = st.text(alphabet=KEY_CHARS, min_size=0, max_size=5)
plain_key = st.text(alphabet='abcXYZ019_-.#\u00e9\u2603"', min_size=1, max_size=5)
value = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: f"{f:.{abs(hash(f)) % 18}g}"),
    st.decimals(allow_nan=False, allow_infinity=False, places=4).map(str),
    st.integers(-(2**64), 2**64).map(lambda i: f"{i}i"),
    st.integers(-5, 2**65).map(lambda i: f"{i}u"),
    st.integers(-(10**20), 10**20).map(str),
    st.text(alphabet='ab ,=\\"\u00e9\t\n', max_size=6).map(lambda s: f'"{s}"'),
    st.sampled_from(
        [
            *EDGE_VALUE_SPELLINGS,
            "F",
            "False",
            "FALSE",
            "1e308",
            "1e309",
            "4.9e-324",
            "1e-400",
            "123456789012345678",
            "0.1000000000000000055511151231257827",
        ]
    ),
)
field = st.tuples(st.one_of(key, plain_key), value).map(lambda kv: f"{kv[0]}={kv[1]}")
tag = st.tuples(st.one_of(key, plain_key), st.one_of(key, plain_key)).map(lambda kv: f",{kv[0]}={kv[1]}")
timestamp = st.one_of(
    st.just(""),
    st.integers(-(2**64), 2**64).map(lambda t: f" {t}"),
    st.integers(-(2**40), 2**40).map(lambda t: f" {t}"),
    st.sampled_from([" ", "  1", " 1 ", " -", " 1a", " 01", " -0"]),
)
line = st.builds(
    lambda m, tags, fields, sep, ts: m + "".join(tags) + sep + ",".join(fields) + ts,
    st.one_of(key, plain_key),
    st.lists(tag, max_size=3),
    st.lists(field, min_size=0, max_size=5),
    st.sampled_from([" ", " ", " ", "  ", ",", ""]),
    timestamp,
)
# Mostly well-formed lines, so that the compiled path takes many and is compared often.
plain_value = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(-1e6, 1e6).map(lambda f: f"{f:.{abs(hash(f)) % 9}f}"),
    st.integers(-(2**63), 2**63 - 1).map(lambda i: f"{i}i"),
    st.integers(0, 2**64 - 1).map(lambda i: f"{i}u"),
    st.integers(-(10**17), 10**17).map(str),
    st.sampled_from(["t", "true", "F", "False", "TRUE", "-999", "1e5", "1E-5", ".5", "5.", "-.5", "01", "-0"]),
    st.text(alphabet="ab ,=#\u00e9\u2603", max_size=6).map(lambda s: f'"{s}"'),
)
plain_line = st.builds(
    lambda m, tags, fields, ts: m + "".join(tags) + " " + ",".join(fields) + ts,
    plain_key,
    st.lists(st.tuples(plain_key, plain_key).map(lambda kv: f",{kv[0]}={kv[1]}"), max_size=3),
    st.lists(st.tuples(plain_key, plain_value).map(lambda kv: f"{kv[0]}={kv[1]}"), min_size=1, max_size=5),
    st.one_of(
        st.just(""),
        st.integers(-(2**63), 2**63 - 1).map(lambda t: f" {t}"),
        st.integers(0, 2**41).map(lambda t: f" {t}"),
    ),
)
noise = st.text(alphabet=' ,=\\"#abc01.-iutTfF\t\r_+e\u00e9', max_size=30)
ending = st.sampled_from(["\n", "\n", "\r\n", "", "\r"])
item = st.tuples(st.one_of(plain_line, plain_line, plain_line, line, noise), ending).map("".join)


def encode_item(text: str, raw: bool, corrupt: int) -> str | bytes:
    if not raw:
        return text
    data = text.encode()
    if corrupt and data:  # invalid UTF-8 somewhere
        k = corrupt % (len(data) + 1)
        data = data[:k] + b"\xff" + data[k:]
    return data


@settings(max_examples=1500, database=None, deadline=None)
@given(
    st.lists(
        st.tuples(item, st.booleans(), st.integers(0, 60).map(lambda c: c if c < 8 else 0)), min_size=1, max_size=6
    ),
    st.sampled_from(["ns", "us", "ms", "s"]),
    st.one_of(st.none(), st.integers(-(2**62), 2**62)),
)
def test_compiled_parser_agrees_with_python(
    items: list[tuple[str, bool, int]], precision: str, default: int | None
) -> None:
    both([encode_item(*i) for i in items], precision, default)


# ---------------------------------------------------------------------------------------------
# Mapping: map_lines (compiled straight to datums) == map_points(parse_lines(...)) in Python

MAPPINGS = [
    LineProtocolMapping(node_id=7),
    LineProtocolMapping(node_id=7, default_source_tag="k", datum_tags=("x",)),
    LineProtocolMapping(
        node_tag="node",
        source_template="/{measurement}/{source}/{k}",
        default_source_tag="k",
        sentinels=frozenset({-999.0, 0.0, 5}),
    ),
    LineProtocolMapping(node_id=1, sentinels=frozenset()),
]
map_item = st.tuples(
    st.one_of(
        item,
        st.builds(
            lambda m, tags, fields, ts: f"{m}{''.join(tags)} {','.join(fields)}{ts}\n",
            st.sampled_from(["otherm-data", "monitoring-data", "other", "weather-data"]),
            st.lists(
                st.sampled_from(
                    [",equipment=e1", ",equipment=e2", ",k=a", ",node=12", ",node=x", ",k=+", ",equipment=" + "z" * 60]
                ),
                max_size=3,
            ),
            st.lists(
                st.tuples(st.sampled_from(["a", "b", "c"]), value).map(lambda kv: f"{kv[0]}={kv[1]}"),
                min_size=1,
                max_size=4,
            ),
            st.one_of(
                st.just(""),
                st.integers(-(2**62), 2**62).map(lambda t: f" {t}"),
                st.integers(0, 2**40).map(lambda t: f" {t}"),
            ),
        ),
    ),
    st.booleans(),
)


def mapped(
    items: list[Any], mapping: LineProtocolMapping, precision: str, default: int | None, compiled: bool
) -> list[object]:
    if compiled:
        return outcome(list(map_lines(items, mapping, precision, default, compiled=True)))
    return outcome(list(map_points(parse_lines(items, precision, default, compiled=False), mapping)))


@settings(max_examples=800, database=None, deadline=None)
@given(
    st.lists(map_item, min_size=1, max_size=6),
    st.sampled_from(range(len(MAPPINGS))),
    st.sampled_from(["ns", "ms", "s"]),
    st.one_of(st.none(), st.integers(0, 2**62)),
)
def test_compiled_mapping_agrees_with_python(
    items: list[tuple[str, bool]], which: int, precision: str, default: int | None
) -> None:
    raw = [text.encode() if as_bytes else text for text, as_bytes in items]
    mapping = MAPPINGS[which]
    assert mapped(raw, mapping, precision, default, True) == mapped(raw, mapping, precision, default, False)


def test_otherm_lines_become_datums_in_c() -> None:
    lines = [f"otherm-data,equipment=e{k % 3} a={k}.5,b=-999,c={k}i,d=t 1600000000\n".encode() for k in range(1500)]
    mapping = LineProtocolMapping(node_id=3)
    assert mapped(lines, mapping, "s", None, True) == mapped(lines, mapping, "s", None, False)
    datums = list(map_lines(lines, mapping, "s"))
    assert all(type(d) is Datum for d in datums)
    assert datums[1] == Datum(3, "/otherm-data/e1", 1_600_000_000_000, {"a": 1.5, "c": 1.0}, {}, {"d": "true"})


def test_classified_mappings_take_the_python_route() -> None:
    lines = [b"otherm-data,equipment=e a=1,b=2 5\n"]
    mapping = LineProtocolMapping(node_id=1, classify={"a": "a"})
    (datum,) = map_lines(lines, mapping, "s")
    assert isinstance(datum, Datum) and dict(datum.a) == {"a": 1.0} and dict(datum.i) == {"b": 2.0}


# ---------------------------------------------------------------------------------------------
# Avro batch envelope: the compiled encoder writes fastavro's bytes


def fastavro_bytes(datums: list[Any]) -> bytes:
    return codec.encode_batch(datums, compiled=False)


text = st.text(max_size=8)
number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**60), 2**60), st.booleans())
datum = st.builds(
    Datum,
    st.one_of(st.integers(0, 2**63 - 1), st.integers(-(2**63), -1)),
    text,
    st.integers(-(2**63), 2**63 - 1),
    st.dictionaries(text, number, max_size=5),
    st.dictionaries(text, number, max_size=3),
    st.dictionaries(text, text, max_size=3),
    st.lists(text, max_size=3).map(tuple),
)


@settings(max_examples=400, database=None, deadline=None)
@given(st.lists(datum, max_size=6))
def test_compiled_encoder_writes_fastavro_bytes(datums: list[Datum]) -> None:
    assert codec.encode_batch(datums, compiled=True) == fastavro_bytes(datums)


@pytest.mark.parametrize(
    "bad",
    [
        Datum(2**63, "s", 1),  # long out of range
        Datum(1, "s", 1, {"x": "text"}),  # type: ignore[dict-item]
        Datum(1, "\udcff", 1),  # not encodable as UTF-8
        Datum(1, "s", 1, {1: 2.0}),  # type: ignore[dict-item]
        Datum(1, "s", 1, tags=["a"]),  # type: ignore[arg-type]
        Datum(1, "s", 1, tags=("a", 2)),  # type: ignore[arg-type]
    ],
)
def test_unusual_datums_fall_back_to_fastavro(bad: Datum) -> None:
    try:
        want: bytes | type[BaseException] = fastavro_bytes([bad])
    except Exception as exc:  # whatever fastavro raises, the compiled path raises too
        want = type(exc)
    if isinstance(want, bytes):
        assert codec.encode_batch([bad]) == want
    else:
        with pytest.raises(want):
            codec.encode_batch([bad])


def test_encoder_matches_the_schema_on_a_big_batch() -> None:
    lines = [f"otherm-data,equipment=e a={k}.25,b={-k}e-3 {1600000000 + k}\n".encode() for k in range(3000)]
    datums = [d for d in map_lines(lines, LineProtocolMapping(node_id=9), "s") if type(d) is Datum]
    payload = codec.encode_batch(datums)
    assert payload == fastavro_bytes(datums)
    assert codec.decode_batch(payload) == datums
