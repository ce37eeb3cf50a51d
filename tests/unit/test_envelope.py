import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.wire.codec import DeadLetter, decode_batch, encode_batch
from processors.auxiliary import AuxChange
from processors.datum import SAMPLE_ABS_MAX, Datum, check_envelope
from processors.rows import accept_batch
from processors.solarnetwork_json import LineRejection, parse_created, parse_line

NOW = 1_700_000_000_000
OK = 1_600_000_000_000


@pytest.mark.parametrize(
    ("datum", "rule"),
    [
        (Datum(1, "", OK, {"w": 1.0}), "source_id.empty"),
        (Datum(1, "x" * 65, OK, {"w": 1.0}), "source_id.too_long"),
        (Datum(1, "/S1/+", OK, {"w": 1.0}), "source_id.wildcard"),
        (Datum(1, "/S1/#", OK, {"w": 1.0}), "source_id.wildcard"),
        (Datum(1, "/S1/\x07", OK, {"w": 1.0}), "source_id.control_character"),
        (Datum(1, "/S1", 5, {"w": 1.0}), "created.too_old"),
        (Datum(1, "/S1", NOW + 2 * 86_400_000, {"w": 1.0}), "created.in_future"),
        (Datum(-1, "/S1", OK, {"w": 1.0}), "node_id.negative"),
        (Datum(2**63, "/S1", OK, {"w": 1.0}), "node_id.out_of_range"),
        (Datum(1, "/S1", 10**30, {"w": 1.0}), "created.in_future"),  # no datetime has it: no crash
        (Datum(1, "/S1", -(10**30), {"w": 1.0}), "created.too_old"),
        (Datum(1, "/S1", OK), "datum.no_samples"),
        (Datum(1, "/S1", OK, tags=("only", "tags")), "datum.no_samples"),
    ],
)
def test_broken_identity_refuses_the_datum(datum: Datum, rule: str) -> None:
    kept, problems = check_envelope(datum, NOW)
    assert kept is None
    assert [p.rule for p in problems] == [rule]


def test_64_characters_is_fine() -> None:
    kept, problems = check_envelope(Datum(1, "x" * 64, OK, {"w": 1.0}), NOW)
    assert kept is not None and not problems


def test_non_finite_sample_refused_alone() -> None:
    d = Datum(1, "/S1", OK, {"w": 1.0, "bad": math.nan}, {"wh": math.inf, "ok": 2.0}, {"m": "auto"})
    kept, problems = check_envelope(d, NOW)
    assert kept is not None
    assert dict(kept.i) == {"w": 1.0} and dict(kept.a) == {"ok": 2.0} and dict(kept.s) == {"m": "auto"}
    assert sorted((p.rule, p.property) for p in problems) == [("sample.non_finite", "bad"), ("sample.non_finite", "wh")]


def test_accept_batch_counts_rows_and_refusals() -> None:
    batch = [
        Datum(1, "/S1", OK, {"w": 1.0}, {"wh": 2.0}, {"m": "x"}, ("t",)),
        Datum(1, "", OK, {"w": 1.0}),
        Datum(2, "/S2", OK + 1, {"w": math.nan, "v": 3.0}),
    ]
    result = accept_batch(batch, NOW)
    assert result.datums_accepted == 2
    assert len(result.rows) == 4
    assert result.rows.kind == ["i", "a", "s", "i"]
    assert result.rows.text[2] == "x" and result.rows.value[2] is None
    assert [(len(r), stage) for _, r, stage in result.refused] == [(1, "envelope"), (1, "envelope")]


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2020-06-01 12:00:00Z", 1_591_012_800_000),
        ("2020-06-01 12:00:00.123Z", 1_591_012_800_123),
        ("2020-06-01T14:00:00+02:00", 1_591_012_800_000),
        (1_591_012_800_000, 1_591_012_800_000),
        ("1969-12-31 23:59:59.5Z", -500),
    ],
)
def test_created_spellings(text: object, ms: int) -> None:
    assert parse_created(text) == ms


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        ("{not json", "json.syntax"),
        ("[1]", "json.not_object"),
        ('{"nodeId":"1","sourceId":"/S","created":1}', "json.node_id"),
        ('{"nodeId":1,"sourceId":"/S"}', "created.missing"),
        ('{"nodeId":1,"sourceId":"/S","created":"2020-06-01 12:00:00"}', "created.unparseable"),
        ('{"nodeId":1,"sourceId":"/S","created":1,"samples":{"i":[]}}', "json.samples"),
        # no Avro long carries these: the producer's encoder raised OverflowError on them
        ('{"nodeId":18446744073709551616,"sourceId":"/S","created":1}', "json.node_id"),
        ('{"nodeId":9223372036854775808,"sourceId":"/S","created":1}', "json.node_id"),
        # json.loads raises plain ValueError / RecursionError on these, not JSONDecodeError
        ('{"nodeId":' + "9" * 5000 + "}", "json.syntax"),
        ("[" * 100_000 + "]" * 100_000, "json.syntax"),
        # half a UTF-16 pair: the Avro encoder raised UnicodeEncodeError on it
        ('{"nodeId":1,"sourceId":"/S\\ud800","created":1,"samples":{"i":{"w":1}}}', "json.lone_surrogate"),
        ('{"nodeId":1,"sourceId":"/S","created":1,"samples":{"s":{"m":"\\udfff"}}}', "json.lone_surrogate"),
    ],
)
def test_bad_lines_name_their_rule(line: str, rule: str) -> None:
    result = parse_line(line, 7)
    assert isinstance(result, LineRejection)
    assert result.reason.rule == rule and result.line_no == 7


def test_solarnetwork_line() -> None:
    line = (
        '{"nodeId":1,"sourceId":"/S1/M1","created":"2020-06-01 12:00:00Z",'
        '"samples":{"i":{"watts":5},"a":{"wattHours":7},"s":{"mode":"auto"},"t":["x"]}}'
    )
    d = parse_line(line, 1)
    assert d == Datum(1, "/S1/M1", 1_591_012_800_000, {"watts": 5}, {"wattHours": 7}, {"mode": "auto"}, ("x",))
    assert parse_line("   \n", 2) is None


@pytest.mark.parametrize(
    "huge",
    [1e308, -1e308, 2.0**53 + 2, -9.1e15, 10**20, -(10**400), 10**4000],
    ids=["1e308", "-1e308", "2^53+2", "-9.1e15", "int 1e20", "int -1e400", "int 1e4000"],
)
def test_out_of_range_sample_refused_alone(huge: float) -> None:
    d = Datum(1, "/S1", OK, {"w": 1.0, "big": huge}, {"wh": huge, "ok": -(2.0**53)}, {"m": "auto"})
    kept, problems = check_envelope(d, NOW)
    assert kept is not None
    assert dict(kept.i) == {"w": 1.0} and dict(kept.a) == {"ok": -(2.0**53)} and dict(kept.s) == {"m": "auto"}
    assert sorted((p.rule, p.property) for p in problems) == [
        ("sample.out_of_range", "big"),
        ("sample.out_of_range", "wh"),
    ]
    json.dumps([p.as_dict() for p in problems])  # the dead letter can say so


def test_the_bound_is_generous_and_rollup_sums_stay_finite() -> None:
    edge = SAMPLE_ABS_MAX
    kept, problems = check_envelope(Datum(1, "/S1", OK, {"w": edge}, {"wh": -edge}), NOW)
    assert kept is not None and not problems
    # a year of one reading per millisecond at the bound, each weighted by a year in ms: finite
    assert math.isfinite(edge * 2 * (366 * 86_400_000) ** 2)
    assert (edge - 1.0) - (edge - 2.0) == 1.0  # a counter still counts whole units up to the bound


def test_a_datum_without_samples_is_refused_not_accepted() -> None:
    result = accept_batch([Datum(1, "/S1", OK), Datum(1, "/S1", OK + 1, {"w": 1.0})], NOW)
    assert result.datums_accepted == 1 and len(result.rows) == 1
    assert [[r.rule for r in reasons] for _, reasons, _ in result.refused] == [["datum.no_samples"]]


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=5)
    | st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**30, 1e308, -1e308, 10**400, "\ud800", "a\udfffb"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)
_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "nodeId": st.integers(-(2**65), 2**65) | _JSON_VALUES,
        "sourceId": st.text(max_size=70) | _JSON_VALUES,
        "created": st.integers(OK, NOW) | st.integers() | st.floats() | st.just("2020-06-01 12:00:00Z") | _JSON_VALUES,
        "samples": st.fixed_dictionaries(
            {},
            optional={k: st.dictionaries(st.text(max_size=4), _JSON_VALUES, max_size=3) | _JSON_VALUES for k in "iast"},
        ),
        "type": st.just("Reset") | _JSON_VALUES,
        "final": _JSON_VALUES,
        "start": _JSON_VALUES,
    },
)


@settings(max_examples=400, deadline=None)
@given(_FIELDS)
def test_every_json_line_is_a_datum_a_change_or_a_rejection_never_an_exception(doc: dict[str, object]) -> None:
    """What `pipeline ingest` does with a line: parse, envelope rules, encode or dead-letter."""
    line = json.dumps(doc)  # Python's json spells nan/inf as NaN/Infinity, which json.loads takes back
    parsed = parse_line(line, 3)
    if isinstance(parsed, (LineRejection, AuxChange)) or parsed is None:
        if isinstance(parsed, AuxChange):
            parsed.to_json()
        return
    kept, problems = check_envelope(parsed, NOW)
    if kept is not None:
        assert decode_batch(encode_batch([kept])) == [replace_floats(kept)]
    if problems:
        json.loads(DeadLetter(problems, None, datum=parsed, stage="ingest", file="f", line=3).to_json())


def replace_floats(d: Datum) -> Datum:
    return Datum(
        d.node_id,
        d.source_id,
        d.created_ms,
        {k: float(v) for k, v in d.i.items()},
        {k: float(v) for k, v in d.a.items()},
        dict(d.s),
        tuple(d.tags),
    )
