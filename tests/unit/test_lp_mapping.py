"""Points to datums: source and node, sentinels, classification, rejections."""

from __future__ import annotations

import math

import pytest

from processors.datum import Kind
from processors.line_protocol import LineError, Point, parse_lines
from processors.lp_mapping import (
    LineProtocolMapping,
    LineRejection,
    map_batch,
    map_points,
)
from tests.unit.lp_helpers import map_point, parse_text

UUID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
OTHERM = f"otherm-data,equipment={UUID} heatpump_power=1.5,source_supplytemp=-999,tstat_set=20 1600000000"
MAPPING = LineProtocolMapping(node_id=7)


def point(line: str, precision: str = "s") -> Point:
    (p,) = parse_text(line, precision)
    assert isinstance(p, Point)
    return p


def test_otherm_line_becomes_a_datum_without_the_sentinel() -> None:
    datum, problems = map_point(point(OTHERM), MAPPING)
    assert not problems
    assert datum is not None
    assert datum.key == (7, f"/otherm-data/{UUID}", 1_600_000_000_000)
    assert dict(datum.i) == {"heatpump_power": 1.5, "tstat_set": 20.0}
    assert not datum.a and not datum.s


def test_sub_millisecond_time_is_floored() -> None:
    datum, _ = map_point(point("weather-data,equipment=e t=1 1600000000123456789", "ns"), MAPPING)
    assert datum is not None and datum.created_ms == 1_600_000_000_123


def test_text_and_booleans_are_status_by_default() -> None:
    datum, _ = map_point(point('monitoring-data,equipment=e mode="auto",on=t,n=3i,u=4u 1'), MAPPING)
    assert datum is not None
    assert dict(datum.s) == {"mode": "auto", "on": "true"}
    assert dict(datum.i) == {"n": 3.0, "u": 4.0}


def test_integer_sentinel_is_missing_too() -> None:
    datum, _ = map_point(point("otherm-data,equipment=e a=-999i,b=1i 1"), MAPPING)
    assert datum is not None and dict(datum.i) == {"b": 1.0}


def test_non_finite_values_never_become_samples() -> None:
    p = Point("otherm-data", (("equipment", "e"),), (("a", math.nan), ("b", math.inf), ("c", 2.0)), 10**15)
    datum, _ = map_point(p, MAPPING)
    assert datum is not None and dict(datum.i) == {"c": 2.0}


def test_all_missing_is_rejected() -> None:
    datum, problems = map_point(point("otherm-data,equipment=e a=-999,b=-999 1"), MAPPING)
    assert datum is None
    assert [p.reason.rule for p in problems] == ["lp.no_samples"]


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        ("otherm-data,site=x a=1 1", "lp.source_tag_missing"),
        ("cpu,equipment=e a=1 1", "lp.measurement_unmapped"),
        ("otherm-data,equipment=" + "x" * 60 + " a=1 1", "source_id.too_long"),
        ("otherm-data,equipment=a+b a=1 1", "source_id.wildcard"),
    ],
)
def test_identity_problems(line: str, rule: str) -> None:
    datum, problems = map_point(point(line), MAPPING)
    assert datum is None
    assert [p.reason.rule for p in problems] == [rule]


def test_missing_time_is_rejected() -> None:
    datum, problems = map_point(point("otherm-data,equipment=e a=1", "ns"), MAPPING)
    assert datum is None and problems[0].reason.rule == "created.missing"


def test_template_node_tag_and_default_source_tag() -> None:
    m = LineProtocolMapping(
        node_tag="node",
        source_tags={},
        default_source_tag="host",
        source_template="/{node}/{measurement}/{source}/{region}",
    )
    datum, _ = map_point(point("cpu,host=h1,node=12,region=eu usage=3 1"), m)
    assert datum is not None and datum.key == (12, "/12/cpu/h1/eu", 1000)
    _, problems = map_point(point("cpu,host=h1,node=x,region=eu usage=3 1"), m)
    assert problems[0].reason.rule == "lp.node_id_invalid"
    _, problems = map_point(point("cpu,host=h1,node=1 usage=3 1"), m)
    assert problems[0].reason.rule == "lp.template_tag_missing"


def test_node_id_or_node_tag_required() -> None:
    with pytest.raises(ValueError):
        LineProtocolMapping()
    with pytest.raises(ValueError):
        LineProtocolMapping(node_id=1, node_tag="n")


def test_classify_callback_decides_and_is_asked_once_per_source_field() -> None:
    asked: list[tuple[str, str]] = []

    def classify(source_id: str, name: str) -> Kind | None:
        asked.append((source_id, name))
        return {"loadside_heat": "a", "compressor_stage": "s", "mode": "i"}.get(name)  # type: ignore[return-value]

    m = LineProtocolMapping(node_id=1, classify=classify)
    text = "\n".join(
        f'otherm-data,equipment=e loadside_heat={n}.5,compressor_stage=2,x=1,mode="auto" {n}' for n in range(1, 4)
    )
    batch = map_batch(parse_lines(text.splitlines(), "s"), m)
    assert len(batch.datums) == 3
    d = batch.datums[0]
    assert dict(d.a) == {"loadside_heat": 1.5}
    assert dict(d.s) == {"compressor_stage": "2.0"}
    assert dict(d.i) == {"x": 1.0}
    # text classified as a number is refused, per line, and the datum goes on
    assert [(r.line_no, r.reason.rule, r.reason.property) for r in batch.rejections] == [
        (1, "sample.not_a_number", "mode"),
        (2, "sample.not_a_number", "mode"),
        (3, "sample.not_a_number", "mode"),
    ]
    assert len(asked) == 4  # cached per (source, field)


def test_lookup_and_drop_unclassified() -> None:
    m = LineProtocolMapping(node_id=1, classify={"a": "a"}, drop_unclassified=True)
    datum, _ = map_point(point("otherm-data,equipment=e a=1,b=2 1"), m)
    assert datum is not None and dict(datum.a) == {"a": 1.0} and not datum.i


def test_stream_keeps_order_and_turns_syntax_errors_into_rejections() -> None:
    lines = [OTHERM, "garbage", "otherm-data,site=1 a=1 1", OTHERM.replace("1600000000", "1600000060")]
    out = list(map_points(parse_lines(lines, "s"), MAPPING))
    kinds = [o.reason.rule if isinstance(o, LineRejection) else "datum" for o in out]
    assert kinds == ["datum", "lp.syntax", "lp.source_tag_missing", "datum"]
    assert [o.line_no for o in out if isinstance(o, LineRejection)] == [2, 3]


def test_batch_takes_line_errors() -> None:
    batch = map_batch([LineError(4, "bad")], MAPPING)
    assert not batch.datums and batch.rejections[0].reason.rule == "lp.syntax"
