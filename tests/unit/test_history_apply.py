"""The history log's apply step (processors/history_apply.py) on plain data, no database:
the event-id, transaction-time, reference and write rules, and the order it asks in."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.history_apply import (
    ONE_MICROSECOND,
    Applied,
    AskClock,
    AskExists,
    AskRecord,
    AskRows,
    Clock,
    Duplicate,
    IdRecord,
    Need,
    Refused,
    Violation,
    Write,
    apply_step,
    decide_apply,
    drive,
    same_content,
    transaction_time,
)
from processors.metadata import (
    CurrentRow,
    Interval,
    MetadataEvent,
    NewRow,
    Plan,
    parse_event,
    same_json,
)

NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)
JAN = datetime(2024, 1, 1, tzinfo=UTC)


def ev(
    entity: str = "site",
    key: dict[str, Any] | None = None,
    op: str = "upsert",
    value: dict[str, Any] | None = None,
    **extra: Any,
) -> MetadataEvent:
    return parse_event(
        {
            "event_id": str(uuid.UUID(int=1)),
            "entity": entity,
            "key": key or {"site_id": "s1"},
            "op": op,
            "value": {"name": "Farm"} if value is None and op == "upsert" else value,
            "author": "alice",
            "comment": "",
            "produced_at": "2025-01-01T00:00:00Z",
            **extra,
        }
    )


SITE = ev()
EQUIPMENT = ev("equipment", {"equipment_id": "hp-1"}, value={"site_id": "s1", "kind": "heat_pump"})


def record(event: MetadataEvent, *, applied: bool, tx_id: int = 7) -> IdRecord:
    return IdRecord(tx_id, applied, event.as_dict())


def republished(event: MetadataEvent, **changes: Any) -> MetadataEvent:
    return parse_event(
        {**event.as_dict(), "produced_at": "2025-05-05T05:05:05Z", "author": "carol", "comment": "again", **changes}
    )


def asked(
    event: MetadataEvent, answers: dict[type, object], tx_time: datetime | None = None
) -> tuple[list[type], object]:
    """The kinds of need the step asks, in order, and its outcome."""
    seen: list[type] = []

    def answer(need: Need) -> object:
        seen.append(type(need))
        return answers.get(type(need))

    return seen, drive(apply_step(event, tx_time), answer)


ALL_THERE: dict[type, object] = {AskRecord: None, AskClock: Clock(NOW, None), AskRows: [], AskExists: True, Write: None}


# --- the order of the questions: lazy, as the rules need them ------------------------------------


def test_a_new_event_asks_everything_in_order() -> None:
    needs, outcome = asked(EQUIPMENT, ALL_THERE)
    assert needs == [AskRecord, AskClock, AskRows, AskExists, Write]
    assert outcome == Applied(Plan(insert=(NewRow({"site_id": "s1", "kind": "heat_pump"}),)), NOW)


def test_a_duplicate_and_a_reused_id_ask_only_the_record() -> None:
    needs, outcome = asked(EQUIPMENT, {**ALL_THERE, AskRecord: record(EQUIPMENT, applied=True)})
    assert (needs, outcome) == ([AskRecord], Duplicate(7))
    other = record(ev("equipment", {"equipment_id": "hp-2"}, value={"site_id": "s1", "kind": "x"}), applied=False)
    needs, outcome = asked(EQUIPMENT, {**ALL_THERE, AskRecord: other})
    assert needs == [AskRecord]
    assert isinstance(outcome, Refused) and outcome.rule == "event.id_reused"
    assert (outcome.recorded, outcome.earlier_tx) == (False, 7)


def test_refusals_stop_the_questions() -> None:
    late = {**ALL_THERE, AskClock: Clock(NOW, NOW)}
    needs, outcome = asked(EQUIPMENT, late, tx_time=NOW)
    assert needs == [AskRecord, AskClock]
    assert isinstance(outcome, Refused) and outcome.rule == "tx_time.not_after_last_change"
    static = ev("source", {"node_id": 1, "source_id": "/S/1"}, value={"equipment_id": "b"})
    needs, outcome = asked(static, {**ALL_THERE, AskRows: [CurrentRow({"equipment_id": "a"}, None, 1)]})
    assert needs == [AskRecord, AskClock, AskRows]  # no reference looked up, nothing written
    assert isinstance(outcome, Refused) and outcome.rule == "static.immutable"
    needs, outcome = asked(EQUIPMENT, {**ALL_THERE, AskExists: False})
    assert needs == [AskRecord, AskClock, AskRows, AskExists]
    assert isinstance(outcome, Refused) and outcome.rule == "reference.missing"
    assert outcome.reason == 'equipment {"equipment_id":"hp-1"} refers to site {"site_id":"s1"}, which does not exist'


def test_a_time_dependent_event_asks_for_its_window_only() -> None:
    tz = ev(
        "node_timezone",
        {"node_id": 1},
        "set_valid",
        {"tz": "UTC"},
        valid_from="2024-01-01T00:00:00Z",
        valid_to="2024-02-01T00:00:00Z",
    )
    needs: list[Need] = []

    def answer(need: Need) -> object:
        needs.append(need)
        return ALL_THERE[type(need)]

    drive(apply_step(tz), answer)
    rows = [n for n in needs if isinstance(n, AskRows)]
    assert rows == [AskRows("node_timezone", '{"node_id":1}', Interval(JAN, datetime(2024, 2, 1, tzinfo=UTC)))]
    assert [n for n in needs if isinstance(n, AskExists)] == [AskExists("node", {"node_id": 1}, '{"node_id":1}')]


def test_a_driver_answering_the_wrong_thing_fails_naming_the_need() -> None:
    with pytest.raises(TypeError, match="AskClock answered with NoneType, expected Clock"):
        asked(SITE, {**ALL_THERE, AskClock: None})
    with pytest.raises(TypeError, match="AskRows answered with dict"):
        asked(SITE, {**ALL_THERE, AskRows: {}})
    with pytest.raises(TypeError, match="AskRecord answered with dict"):
        asked(SITE, {**ALL_THERE, AskRecord: SITE.as_dict()})


# --- the event id ----------------------------------------------------------------------------------


def test_id_rules() -> None:
    assert isinstance(decide_apply(SITE, clock=NOW), Applied)
    assert decide_apply(SITE, record=record(SITE, applied=True), clock=NOW) == Duplicate(7)
    # refused before: tried again, and applies now
    assert isinstance(decide_apply(SITE, record=record(SITE, applied=False), clock=NOW), Applied)
    # the same content sent again by someone else, later, with another comment: the same event
    again = republished(SITE)
    assert decide_apply(again, record=record(SITE, applied=True), clock=NOW) == Duplicate(7)
    for other in (
        republished(SITE, value={"name": "Barn"}),
        republished(SITE, op="delete", value=None),
        republished(SITE, key={"site_id": "s2"}),
    ):
        for applied in (True, False):
            out = decide_apply(other, record=record(SITE, applied=applied), clock=NOW)
            assert out == Refused(
                "event.id_reused", f"event_id {SITE.event_id} was used by another event (tx 7)", None, 7
            ), other


def jsonb_read_back(doc: Any) -> Any:
    """What PostgreSQL's jsonb gives back for a document psycopg wrote (json.dumps): numbers
    become numerics, printed in plain notation, which json.loads reads as int or float."""

    def numeric_text(x: Any) -> Any:
        return json.loads(format(Decimal(x), "f"))

    return json.loads(json.dumps(doc), parse_float=numeric_text, parse_int=numeric_text)


def test_content_is_compared_as_jsonb_stores_it() -> None:
    big = ev(value={"name": "Farm", "area_m2": 1e23})
    stored = jsonb_read_back(big.as_dict())
    assert stored["value"]["area_m2"] == 10**23  # jsonb's numeric, not the float 1e23
    assert decide_apply(big, clock=NOW, record=IdRecord(7, True, stored)) == Duplicate(7)
    # 99999999999999991611392 == 1e23 in Python (the float's exact value), but it is another
    # number in JSON, and jsonb keeps both apart
    near = ev(value={"name": "Farm", "area_m2": 99999999999999991611392})
    out = decide_apply(near, clock=NOW, record=IdRecord(7, True, big.as_dict()))
    assert isinstance(out, Refused) and out.rule == "event.id_reused"
    out = decide_apply(near, clock=NOW, record=IdRecord(7, True, stored))
    assert isinstance(out, Refused) and out.rule == "event.id_reused"
    # true is not 1, though True == 1 in Python
    flag = ev(value={"name": "Farm", "heated": True})
    out = decide_apply(ev(value={"name": "Farm", "heated": 1}), clock=NOW, record=IdRecord(7, True, flag.as_dict()))
    assert isinstance(out, Refused) and out.rule == "event.id_reused"
    # 1 and 1.0 are one JSON number
    assert decide_apply(
        ev(value={"name": "Farm", "floors": 1.0}),
        clock=NOW,
        record=IdRecord(7, True, ev(value={"name": "Farm", "floors": 1}).as_dict()),
    ) == Duplicate(7)


# --- the transaction time ----------------------------------------------------------------------

times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))


@given(clock=times, last=st.none() | times, wanted=st.none() | times)
def test_transaction_time_is_after_the_keys_last_change(
    clock: datetime, last: datetime | None, wanted: datetime | None
) -> None:
    out = decide_apply(SITE, clock=clock, last_change=last, tx_time=wanted)
    if wanted is not None and last is not None and wanted <= last:
        assert isinstance(out, Refused)
        assert (out.rule, out.tx_time, out.recorded) == ("tx_time.not_after_last_change", wanted, True)
        return
    assert isinstance(out, Applied)
    assert last is None or out.tx_time > last
    if wanted is not None:
        assert out.tx_time == wanted
    elif last is None or clock > last:
        assert out.tx_time == clock
    else:
        assert out.tx_time == last + ONE_MICROSECOND  # the clock lags the key: just after it


def test_transaction_time_in_another_zone_is_normalised() -> None:
    oslo = datetime(2025, 6, 1, 14, tzinfo=UTC).astimezone(ZoneInfo("Europe/Oslo"))
    assert transaction_time(oslo, Clock(NOW, None)) == (datetime(2025, 6, 1, 14, tzinfo=UTC), None)


# --- everything together: a model of the rules ----------------------------------------------------

VALUES = st.sampled_from([{"name": "Farm"}, {"name": "Barn"}, {"name": "Farm", "floors": 2}])


@settings(max_examples=300)
@given(
    value=VALUES,
    known=st.sampled_from(["none", "same applied", "same refused", "other applied", "other refused"]),
    current=st.none() | VALUES,
    late=st.booleans(),
    violation=st.none() | st.sampled_from(["versions_no_overlap", "a_check"]),
)
def test_outcome_follows_the_rules_in_order(
    value: dict[str, Any], known: str, current: dict[str, Any] | None, late: bool, violation: str | None
) -> None:
    event = ev(value=value)
    recorded = {
        "none": None,
        "same applied": IdRecord(3, True, republished(event).as_dict()),
        "same refused": IdRecord(3, False, republished(event).as_dict()),
        "other applied": IdRecord(3, True, ev(value={"name": "Other"}).as_dict()),
        "other refused": IdRecord(3, False, ev(value={"name": "Other"}).as_dict()),
    }[known]
    rows = [] if current is None else [CurrentRow(current, None, 11)]
    out = decide_apply(
        event,
        clock=NOW,
        last_change=NOW - timedelta(hours=1),
        tx_time=NOW - timedelta(hours=2) if late else None,
        record=recorded,
        rows=rows,
        violation=None if violation is None else Violation(violation, "no"),
    )
    if known.startswith("other"):
        assert isinstance(out, Refused) and out.rule == "event.id_reused" and not out.recorded
    elif known == "same applied":
        assert out == Duplicate(3)
    elif late:
        assert isinstance(out, Refused) and out.rule == "tx_time.not_after_last_change"
    elif violation is not None:  # whatever the plan: the step believes the write's answer
        assert out == Refused(f"constraint.{violation}", "refused by the database: no", NOW)
    elif current is not None and same_json(current, value):
        assert out == Applied(Plan(), NOW)  # a restatement: applied, no version written
    else:
        assert isinstance(out, Applied) and out.changed and out.tx_time == NOW
        assert out.plan.insert == (NewRow(value),) and out.plan.close == tuple(rows)


def test_a_write_refused_by_the_database_is_a_recorded_refusal() -> None:
    out = decide_apply(SITE, clock=NOW, violation=Violation("versions_no_overlap", "conflicting key"))
    assert out == Refused("constraint.versions_no_overlap", "refused by the database: conflicting key", NOW)
    assert out.recorded


# --- JSON equality as jsonb sees it ------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4),
    max_leaves=12,
)


@given(json_values)
def test_same_json_holds_for_a_value_and_its_jsonb_read_back(x: Any) -> None:
    assert same_json(x, x)
    assert same_json(x, jsonb_read_back(x))
    assert same_json(jsonb_read_back(x), x)


@given(json_values, json_values)
def test_same_json_is_symmetric(a: Any, b: Any) -> None:
    # PostgreSQL's own jsonb = is the oracle in tests/integration/test_history_paths.py
    assert same_json(a, b) == same_json(b, a)


def test_same_json_cases() -> None:
    assert same_json({"a": 1, "b": [1, "x"]}, {"b": [1.0, "x"], "a": 1})
    assert same_json(1e23, 10**23) and not same_json(1e23, 99999999999999991611392)
    assert not same_json(True, 1) and not same_json(0, False) and not same_json(None, 0)
    assert not same_json({"a": None}, {}) and not same_json([], {}) and not same_json("1", 1)
    assert same_content({**SITE.as_dict(), "author": "x", "comment": "y"}, SITE.as_dict())
