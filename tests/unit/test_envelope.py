import math

import pytest

from processors.datum import Datum, check_envelope
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
    assert sorted((p.rule, p.property) for p in problems) == [
        ("sample.non_finite", "bad"), ("sample.non_finite", "wh")]


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
    ],
)
def test_bad_lines_name_their_rule(line: str, rule: str) -> None:
    result = parse_line(line, 7)
    assert isinstance(result, LineRejection)
    assert result.reason.rule == rule and result.line_no == 7


def test_solarnetwork_line() -> None:
    line = ('{"nodeId":1,"sourceId":"/S1/M1","created":"2020-06-01 12:00:00Z",'
            '"samples":{"i":{"watts":5},"a":{"wattHours":7},"s":{"mode":"auto"},"t":["x"]}}')
    d = parse_line(line, 1)
    assert d == Datum(1, "/S1/M1", 1_591_012_800_000, {"watts": 5}, {"wattHours": 7}, {"mode": "auto"}, ("x",))
    assert parse_line("   \n", 2) is None
