"""SolarNetwork auxiliary lines (Reset markers): store, delete, move, refusals, round trips."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.auxiliary import AuxChange, AuxError, AuxKey, AuxRecord, parse_change, parse_change_bytes
from processors.solarnetwork_json import LineRejection, parse_line

ISSUE_LINE = (
    '{"nodeId":1,"sourceId":"/S1/M1","type":"Reset","created":"2020-06-01 12:20:00Z",'
    '"final":{"a":{"wattHours":115}},"start":{"a":{"wattHours":5}}}'
)
T = 1_591_014_000_000  # 2020-06-01T12:20:00Z


def test_the_issue_line_is_a_reset_store() -> None:
    change = parse_line(ISSUE_LINE, 1)
    assert change == AuxChange(
        "store", record=AuxRecord(AuxKey(1, "/S1/M1", "Reset", T), {"wattHours": 115.0}, {"wattHours": 5.0})
    )


def test_delete_and_move() -> None:
    key = {"nodeId": 1, "sourceId": "/S1/M1", "type": "Reset", "created": "2020-06-01T12:20:00Z"}
    assert parse_change({"action": "delete", **key}) == AuxChange("delete", removed=AuxKey(1, "/S1/M1", "Reset", T))
    moved = parse_change(
        {"from": key, "to": {**key, "created": T + 60_000, "final": {"a": {"wh": 1}}, "start": {"a": {"wh": 0}}}}
    )
    assert moved.action == "move"
    assert moved.removed == AuxKey(1, "/S1/M1", "Reset", T)
    assert moved.record is not None and moved.record.key.created_ms == T + 60_000


@pytest.mark.parametrize(
    ("doc", "rule"),
    [
        ({"nodeId": 1, "sourceId": "/a", "type": "Other", "created": T}, "aux.type"),
        ({"nodeId": "1", "sourceId": "/a", "type": "Reset", "created": T}, "aux.node_id"),
        ({"nodeId": 1, "sourceId": "", "type": "Reset", "created": T}, "aux.source_id"),
        ({"nodeId": 1, "sourceId": "/a", "type": "Reset"}, "aux.created"),
        ({"nodeId": 1, "sourceId": "/a", "type": "Reset", "created": "2020-06-01 12:20:00"}, "aux.created"),
        ({"nodeId": 1, "sourceId": "/a", "type": "Reset", "created": T, "start": {"a": {"w": 1}}}, "aux.final"),
        ({"nodeId": 1, "sourceId": "/a", "type": "Reset", "created": T, "final": {"a": {"w": 1}}}, "aux.start"),
        (
            {
                "nodeId": 1,
                "sourceId": "/a",
                "type": "Reset",
                "created": T,
                "final": {"a": {"w": "x"}},
                "start": {"a": {"w": 1}},
            },
            "aux.final",
        ),
        (
            {
                "nodeId": 1,
                "sourceId": "/a",
                "type": "Reset",
                "created": T,
                "final": {"a": {"w": 1}},
                "start": {"a": {"v": 1}},
            },
            "aux.reset_properties",
        ),
        (
            {"nodeId": 1, "sourceId": "/a", "type": "Reset", "created": T, "final": {"a": {}}, "start": {"a": {}}},
            "aux.final",
        ),
        ({"from": {"nodeId": 1, "sourceId": "/a", "type": "Reset", "created": T}}, "aux.move"),
        ({"action": "rename", "nodeId": 1, "sourceId": "/a", "type": "Reset", "created": T}, "aux.action"),
    ],
)
def test_refusals_name_their_rule(doc: dict[str, object], rule: str) -> None:
    with pytest.raises(AuxError) as info:
        parse_change(doc)
    assert info.value.rule == rule
    rejected = parse_line(json.dumps(doc), 7)
    assert isinstance(rejected, LineRejection) and rejected.reason.rule == rule and rejected.line_no == 7


def test_not_json_is_a_syntax_refusal() -> None:
    with pytest.raises(AuxError) as info:
        parse_change_bytes(b"{nope")
    assert info.value.rule == "aux.syntax"


values = st.floats(-(2.0**53), 2.0**53, allow_nan=False, allow_infinity=False, width=64)  # the sample bound
props = st.dictionaries(st.text(min_size=1, max_size=8), values, min_size=1, max_size=3)
keys = st.builds(
    AuxKey, st.integers(0, 2**53), st.text(min_size=1, max_size=20), st.just("Reset"), st.integers(-(2**40), 2**42)
)


@st.composite
def records(draw: st.DrawFn) -> AuxRecord:
    final = draw(props)
    start = {p: draw(values) for p in final}
    return AuxRecord(draw(keys), final, start, draw(st.text(max_size=10)))


changes = st.one_of(
    st.builds(lambda r: AuxChange("store", record=r), records()),
    st.builds(lambda k: AuxChange("delete", removed=k), keys),
    st.builds(
        lambda r, k: AuxChange("move", record=r, removed=AuxKey(k.node_id, k.source_id, "Reset", k.created_ms)),
        records(),
        keys,
    ),
)


@given(changes)
def test_the_topic_form_round_trips(change: AuxChange) -> None:
    assert parse_change_bytes(change.to_json()) == change
