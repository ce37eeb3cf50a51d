"""Line-protocol decoder: syntax, escaping, precision, streaming, fast path == full parser."""

from __future__ import annotations

import io
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.line_protocol import (
    FieldValue,
    LineError,
    Point,
    Unsigned,
    _parse_buffer,
    fast_parse,
    parse_lines,
    precision_multiplier,
)
from tests.unit.lp_helpers import EDGE_VALUE_SPELLINGS, encode_point, parse_line, parse_text

OTHERM = (
    "otherm-data,equipment=3fa85f64-5717-4562-b3fc-2c963f66afa6 "
    "heatpump_power=1.5,source_supplytemp=-999,compressor_stage=1 1600000000"
)


def one(line: str | bytes, precision: str = "ns", default: int | None = None) -> Point:
    got = parse_line(line, precision, default)
    assert isinstance(got, Point), got
    return got


def error(line: str | bytes) -> LineError:
    got = parse_line(line)
    assert isinstance(got, LineError), got
    return got


def typed(fields: tuple[tuple[str, FieldValue], ...]) -> list[tuple[str, str, str]]:
    """Values with their type and repr, so 1 != 1.0 != True and -0.0 != 0.0."""
    return [(k, type(v).__name__, repr(v)) for k, v in fields]


def exact(p: Point) -> tuple[object, ...]:
    """A point as two parses of a line must agree on it, field types included (see `typed`)."""
    return (p.measurement, p.tags, typed(p.fields), p.time_ns)


def test_otherm_line() -> None:
    p = one(OTHERM, "s")
    assert p.measurement == "otherm-data"
    assert p.tags == (("equipment", "3fa85f64-5717-4562-b3fc-2c963f66afa6"),)
    assert p.fields == (("heatpump_power", 1.5), ("source_supplytemp", -999.0), ("compressor_stage", 1.0))
    assert p.time_ns == 1_600_000_000 * 10**9


def test_value_types() -> None:
    p = one('m i=-5i,u=18446744073709551615u,f=1e3,s="x y",b=t,B=FALSE,g=.5,h=5.')
    assert typed(p.fields) == [
        ("i", "int", "-5"),
        ("u", "Unsigned", "Unsigned(18446744073709551615)"),
        ("f", "float", "1000.0"),
        ("s", "str", "'x y'"),
        ("b", "bool", "True"),
        ("B", "bool", "False"),
        ("g", "float", "0.5"),
        ("h", "float", "5.0"),
    ]


@pytest.mark.parametrize("spelling", ["t", "T", "true", "True", "TRUE"])
def test_true_spellings(spelling: str) -> None:
    assert one(f"m b={spelling}").fields == (("b", True),)


@pytest.mark.parametrize("spelling", ["f", "F", "false", "False", "FALSE"])
def test_false_spellings(spelling: str) -> None:
    assert one(f"m b={spelling}").fields == (("b", False),)


@pytest.mark.parametrize(
    "line",
    [
        "m b=tRUE",
        "m b=yes",
        "m x=1i2",
        "m x=9223372036854775808i",
        "m x=18446744073709551616u",
        "m x=-1u",
        "m x=inf",
        "m x=-inf",
        "m x=NaN",
        "m x=+1",
        "m x=1e400",
        "m x=1__0",
        "m x=",
        "m x",
        "m",
        "m ",
        "m,t=1",
        "m,t= x=1",
        "m, x=1",
        ",t=1 x=1",
        "m,t=1,t=2 x=1",
        "m x=1 12a",
        "m x=1 1 2",
        "m x=1 9223372036854775808",
        'm x="open',
        "m x=1,",
        "m x=1,,y=2",
        "m\tx=1",
        "# bad\tcomment",
    ],
)
def test_errors(line: str) -> None:
    error(line)


def test_escapes_differ_by_section() -> None:
    # measurement: comma and space; '=' needs no escape
    assert one(r"m\ 1\,x=y f=1").measurement == "m 1,x=y"
    # tag key and value: comma, space and '='
    assert one(r"m,k\=1\ a=v\,1\=2\ 3 f=1").tags == (("k=1 a", "v,1=2 3"),)
    # field key: comma, space and '='
    assert one(r"m k\=1\,\ a=1").fields == (("k=1, a", 1.0),)
    # string: only \\ and \" (v2.1.0); \n stays two characters
    assert one(r'm s="a\"b\\c\nd"').fields == (("s", 'a"b\\c\\nd'),)
    # a backslash before anything else stays
    assert one(r"m\a,k=v\x f=1").measurement == "m\\a"
    assert one(r"m\a,k=v\x f=1").tags == (("k", "v\\x"),)


def test_string_field_may_hold_separators_and_newlines() -> None:
    points = parse_text('m s="a, b=c\nd" 5\nm2 x=1 6\n')
    assert points == [Point("m", (), (("s", "a, b=c\nd"),), 5), Point("m2", (), (("x", 1.0),), 6)]
    assert [p.line_no for p in points if isinstance(p, Point)] == [1, 3]


@pytest.mark.parametrize(
    ("precision", "ts", "ns"),
    [("ns", "1", 1), ("us", "1", 1_000), ("µs", "2", 2_000), ("ms", "3", 3_000_000), ("s", "4", 4 * 10**9)],
)
def test_precision(precision: str, ts: str, ns: int) -> None:
    assert one(f"m x=1 {ts}", precision).time_ns == ns


def test_precision_overflow_is_an_error() -> None:
    assert isinstance(parse_line("m x=1 9223372036854775807", "s"), LineError)
    assert one("m x=1 9223372036854775807").time_ns == 2**63 - 1
    assert one("m x=1 -5").time_ns == -5


def test_default_time_truncated_to_precision() -> None:
    assert one("m x=1", "ns", 1_234_567_891).time_ns == 1_234_567_891
    assert one("m x=1", "ms", 1_234_567_891).time_ns == 1_234_000_000
    assert one("m x=1", "s", 1_234_567_891).time_ns == 1_000_000_000
    assert one("m x=1").time_ns is None


def test_unknown_precision() -> None:
    with pytest.raises(ValueError):
        precision_multiplier("m")


def test_comments_blank_lines_crlf_and_line_numbers() -> None:
    text = b"# header\r\n\r\n   \nm x=1 1\r\n  # indented comment\nbad\nm x=2 2"
    out = parse_text(text)
    assert [type(r).__name__ for r in out] == ["Point", "LineError", "Point"]
    assert [r.line_no for r in out] == [4, 6, 7]


def test_errors_do_not_stop_the_stream() -> None:
    lines = [b"m x=1 1\n", b"m x=oops 2\n", b"m,=1 x=1\n", b"m x=3 3\n"]
    out = list(parse_lines(lines))
    assert [type(r).__name__ for r in out] == ["Point", "LineError", "LineError", "Point"]
    assert [r.line_no for r in out] == [1, 2, 3, 4]


def test_start_line_offsets_numbers() -> None:
    out = list(parse_lines(["m x=1", "junk"], start_line=100))
    assert [r.line_no for r in out] == [100, 101]


def test_invalid_utf8_is_refused_in_tokens_only() -> None:
    assert isinstance(parse_line(b"m\xff x=1"), LineError)
    assert isinstance(parse_line(b'm s="\xc3"'), LineError)
    assert parse_text(b"# comment \xff\nm x=1") == [Point("m", (), (("x", 1.0),), None)]
    assert one('m,k=é s="ü"'.encode()).tags == (("k", "é"),)


def test_streaming_is_lazy() -> None:
    def endless() -> io.StringIO:
        return io.StringIO("m x=1 1\n" * 10)

    seen = 0
    for item in parse_lines(endless()):
        assert isinstance(item, Point)
        seen += 1
    assert seen == 10

    def forever():  # type: ignore[no-untyped-def]
        while True:
            yield "m x=1 1\n"

    gen = parse_lines(forever())
    assert [next(gen).time_ns for _ in range(3)] == [1, 1, 1]


def test_unclosed_string_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import processors.line_protocol as lp

    monkeypatch.setattr(lp, "MAX_PENDING_CHARS", 100)
    lines = ['m s="never closed\n'] + ["filler " * 5 + "\n"] * 10 + ["m x=1 1\n"]
    out = list(parse_lines(lines))
    assert isinstance(out[0], LineError)
    assert isinstance(out[-1], Point)


def test_fast_path_declines_rather_than_guesses() -> None:
    assert fast_parse("m x=1 1") == Point("m", (), (("x", 1.0),), 1)
    for line in ["m x=+1", "m x=inf", "m x=1_0", 'm x="s"', r"m\ a x=1", "m  x=1", "# c", "m x=1i"]:
        got = fast_parse(line)
        assert got is None or got == _full(line), line


# ---------------------------------------------------------------------------------------------
# Fast path == full parser (Hypothesis)


def _full(line: str, mult: int = 1, default: int | None = None) -> Point | LineError | None:
    results, rest, _ = _parse_buffer(line + "\n", 1, mult, default, final=True)
    assert rest is None
    return results[0] if len(results) == 1 else None


NAME_CHARS = 'abcXYZ019_-.#=,\\ "+\t'
name = st.text(alphabet=NAME_CHARS, min_size=0, max_size=6)
value_spelling = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(2**64), 2**64).map(lambda i: f"{i}i"),
    st.integers(-5, 2**65).map(lambda i: f"{i}u"),
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from([*EDGE_VALUE_SPELLINGS, "1__0", "-Infinity", '"s"', '"a\\"b"', "1 2"]),
)
field = st.tuples(name, value_spelling).map(lambda kv: f"{kv[0]}={kv[1]}")
tag = st.tuples(name, name).map(lambda kv: f",{kv[0]}={kv[1]}")
timestamp = st.one_of(
    st.just(""),
    st.integers(-(2**64), 2**64).map(lambda t: f" {t}"),
    st.sampled_from([" ", "  1", " 1 ", " -", " 1a", " 01"]),
)
structured_line = st.builds(
    lambda m, tags, fields, sep, ts: m + "".join(tags) + sep + ",".join(fields) + ts,
    name,
    st.lists(tag, max_size=3),
    st.lists(field, min_size=0, max_size=4),
    st.sampled_from([" ", "  ", ",", ""]),
    timestamp,
)
# Mostly well-formed lines, so that the fast path accepts many and is compared often.
plain_name = st.text(alphabet="abcXYZ019_-.=#", min_size=1, max_size=6)
plain_value = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-(2**63), 2**63).map(lambda i: f"{i}i"),
    st.integers(0, 2**64).map(lambda i: f"{i}u"),
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["t", "true", "F", "False", "1e5", "1E-5", ".5", "5.", "-.5", "01", "-0", "1_0"]),
)
plain_line = st.builds(
    lambda m, tags, fields, ts: m + "".join(tags) + " " + ",".join(fields) + ts,
    plain_name,
    st.lists(st.tuples(plain_name, plain_name).map(lambda kv: f",{kv[0]}={kv[1]}"), max_size=2),
    st.lists(st.tuples(plain_name, plain_value).map(lambda kv: f"{kv[0]}={kv[1]}"), min_size=1, max_size=4),
    st.one_of(st.just(""), st.integers(-(2**63), 2**63).map(lambda t: f" {t}")),
)
noise_line = st.text(alphabet=' ,=\\"#abc01.-iutTfF\t\r_+e', max_size=30)


@settings(max_examples=1500, database=None, deadline=None)
@given(
    st.one_of(plain_line, structured_line, noise_line),
    st.sampled_from([1, 1_000, 1_000_000, 1_000_000_000]),
    st.one_of(st.none(), st.integers(-(2**62), 2**62)),
)
def test_fast_path_agrees_with_full_parser(line: str, mult: int, default: int | None) -> None:
    if "\n" in line or not line:
        return
    if default is not None:
        default -= default % mult
    fast = fast_parse(line, mult, default)
    if fast is None:
        return
    full = _full(line, mult, default)
    assert isinstance(full, Point), (line, full)
    assert exact(fast) == exact(full)


def test_fast_path_takes_the_common_lines() -> None:
    assert fast_parse(OTHERM, 10**9) is not None
    assert fast_parse("cpu,host=a,region=b usage=1i,ok=true,n=3u,x=-0.5 -5") is not None


# ---------------------------------------------------------------------------------------------
# encode -> parse round trip

printable = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"),
    min_size=1,
    max_size=8,
).filter(lambda s: not s.endswith("\\"))
field_value = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 2**64 - 1).map(Unsigned),
    st.booleans(),
    st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=10),
)


@st.composite
def points(draw: st.DrawFn) -> tuple[Point, str]:
    measurement = draw(printable.filter(lambda s: not s.startswith(("#", " "))))
    tag_keys = draw(st.lists(printable, max_size=3, unique=True))
    tags = tuple((k, draw(printable)) for k in tag_keys)
    fields = tuple(draw(st.lists(st.tuples(printable, field_value), min_size=1, max_size=4)))
    precision = draw(st.sampled_from(["ns", "us", "ms", "s"]))
    mult = precision_multiplier(precision)
    ts = draw(st.one_of(st.none(), st.integers(-((2**63) // mult), (2**63 - 1) // mult)))
    time_ns = None if ts is None else ts * mult
    return Point(measurement, tags, fields, time_ns), precision


@settings(max_examples=600, database=None, deadline=None)
@given(points())
def test_encode_then_parse_round_trips(case: tuple[Point, str]) -> None:
    point, precision = case
    line = encode_point(point, precision)
    for use_fast_path in (True, False):
        (got,) = parse_text(line, precision, use_fast_path=use_fast_path)
        assert isinstance(got, Point), (line, got)
        assert exact(got) == exact(point)


def test_encode_refuses_what_cannot_be_written() -> None:
    with pytest.raises(ValueError):
        encode_point(Point("m", (), (("x", math.nan),), None))
    with pytest.raises(ValueError):
        encode_point(Point("m\n", (), (("x", 1.0),), None))
    with pytest.raises(ValueError):
        encode_point(Point("m", (("k\\", "v"),), (("x", 1.0),), None))
    with pytest.raises(ValueError):
        encode_point(Point("m", (), (), None))
    assert encode_point(Point("a b", (("k=", "v,"),), (("s", 'q"\\'),), 5)) == 'a\\ b,k\\==v\\, s="q\\"\\\\" 5'
