"""The metadata event schema and the rules of EBAS's metadata classes, without a database."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from functools import partial
from typing import Any

import jsonschema
import pytest

from processors.metadata import (
    ENTITY_CLASSES,
    EVENT_JSON_SCHEMA,
    CurrentRow,
    DatamodelEntry,
    Interval,
    MetadataCatalog,
    MetadataEvent,
    MetadataEventError,
    NewRow,
    Plan,
    Refusal,
    TimedValue,
    decide,
    key_text,
    parse_event,
    references,
    value_at,
)
from tests.samples import SEED_QRATING, health_model, metadata_event


def t(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


# events by alice, "why", produced on 2025-01-01 (any field can be given otherwise)
raw = partial(metadata_event, author="alice", comment="why", produced_at="2025-01-01T00:00:00Z")


def ev(*args: Any, **kw: Any) -> MetadataEvent:
    return parse_event(raw(*args, **kw))


QRATING = {**SEED_QRATING, "ideal": {"value": 25, "label": "IDEAL"}}
TZ = "node_timezone"
N1 = {"node_id": 1}


# --- schema ----------------------------------------------------------------------------------


def test_parse_full_event_normalises_times_to_utc() -> None:
    d = raw(TZ, N1, "set_valid", {"tz": "Europe/Oslo"}, "2024-01-01T01:00:00+01:00", None)
    e = parse_event(json.dumps(d))
    assert e.event_id == uuid.UUID(d["event_id"])
    assert e.valid_from == t("2024-01-01T00:00:00")
    assert e.valid_from is not None and e.valid_from.tzinfo is UTC
    assert e.valid_to is None
    assert e.spec.cls == "time_dependent"
    assert e.key_text == '{"node_id":1}'
    assert e.comment == "why" and e.author == "alice"
    # the wire form round-trips
    assert parse_event(e.as_dict()) == e


def test_comment_defaults_to_empty_and_value_null_for_delete() -> None:
    d = raw("site", {"site_id": "s1"}, "delete")
    del d["comment"], d["value"], d["valid_from"], d["valid_to"]
    e = parse_event(d)
    assert e.comment == "" and e.value is None


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"extra": 1}, "extra", "event.unknown_field"),
        ({"event_id": "nope"}, "event_id", "event.event_id"),
        ({"entity": "station"}, "entity", "event.entity_unknown"),
        ({"key": {"node": 1}}, "key", "event.key_fields"),
        ({"key": {"node_id": "1"}}, "key.node_id", "event.key_type"),
        ({"key": {"node_id": True}}, "key.node_id", "event.key_type"),
        ({"op": "merge"}, "op", "event.op_unknown"),
        ({"op": "upsert"}, "op", "event.op_not_allowed"),  # time-dependent: no plain upsert
        ({"value": None}, "value", "event.value_missing"),
        ({"value": [1]}, "value", "event.value_type"),
        (
            {"valid_from": "2024-02-01T00:00:00Z", "valid_to": "2024-01-01T00:00:00Z"},
            "valid_to",
            "event.interval_empty",
        ),
        ({"valid_from": "2024-01-01T00:00:00"}, "valid_from", "event.time_naive"),
        ({"valid_from": "yesterday"}, "valid_from", "event.time_format"),
        ({"author": ""}, "author", "event.author"),
        ({"comment": 5}, "comment", "event.comment"),
        ({"produced_at": None}, "produced_at", "event.produced_at_missing"),
    ],
)
def test_schema_errors_name_field_and_rule(change: dict[str, Any], field: str, rule: str) -> None:
    d = raw(TZ, N1, "set_valid", {"tz": "UTC"}, "2024-01-01T00:00:00Z")
    d.update(change)
    with pytest.raises(MetadataEventError) as info:
        parse_event(d)
    assert (info.value.field, info.value.rule) == (field, rule)


def test_schema_errors_per_class() -> None:
    with pytest.raises(MetadataEventError, match="no valid time"):
        ev("site", {"site_id": "s"}, "upsert", {"name": "x"}, "2024-01-01T00:00:00Z")
    with pytest.raises(MetadataEventError, match="not allowed for site"):
        ev("site", {"site_id": "s"}, "set_valid", {"name": "x"})
    with pytest.raises(MetadataEventError, match="takes no value"):
        ev("site", {"site_id": "s"}, "delete", {"name": "x"})
    with pytest.raises(MetadataEventError, match="close needs the new valid_to"):
        ev(TZ, N1, "close", None, "2024-01-01T00:00:00Z")
    with pytest.raises(MetadataEventError) as info:
        ev("source", {"node_id": 1, "source_id": "a/#"}, "upsert", {})
    assert info.value.rule == "source_id.wildcard"
    with pytest.raises(MetadataEventError, match="not JSON"):
        parse_event("{")


def test_nullable_key_fields() -> None:
    e = ev(
        "source_binding",
        {"node_id": None, "source_pattern": "/S1/**", "valid_from_ms": None},
        "upsert",
        {"datamodel": "health"},
    )
    assert e.key == {"node_id": None, "source_pattern": "/S1/**", "valid_from_ms": None}
    with pytest.raises(MetadataEventError, match="key.node_id"):
        ev("node", {"node_id": None}, "upsert", {"name": "x"})


def test_json_schema_accepts_and_refuses_like_the_parser() -> None:
    jsonschema.Draft202012Validator.check_schema(EVENT_JSON_SCHEMA)
    good = raw(TZ, N1, "set_valid", {"tz": "UTC"}, "2024-01-01T00:00:00Z")
    jsonschema.validate(good, EVENT_JSON_SCHEMA)
    parse_event(good)
    for bad in (
        {**good, "extra": 1},
        {**good, "op": "merge"},
        {**good, "entity": "x"},
        {k: v for k, v in good.items() if k != "author"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, EVENT_JSON_SCHEMA)
        with pytest.raises(MetadataEventError):
            parse_event(bad)


def test_registry_declares_every_ebas_class() -> None:
    classes = {name: spec.cls for name, spec in ENTITY_CLASSES.items()}
    assert classes["organization"] == "master"
    assert classes["source"] == "static" and classes["datamodel"] == "static"
    assert classes["site"] == classes["equipment"] == classes["source_binding"] == "history"
    assert classes["node_timezone"] == classes["datastream_template"] == "time_dependent"
    assert key_text({"b": 1, "a": "x"}) == '{"a":"x","b":1}'


# --- master, static, history -----------------------------------------------------------------


def row(value: dict[str, Any], valid: Interval | None = None, row_id: int = 1) -> CurrentRow:
    return CurrentRow(value, valid, row_id)


def test_master_data_corrections_overwrite() -> None:
    e = ev("organization", {"org_id": 7}, "upsert", {"name": "ACME Corp"})
    assert decide(e, []) == Plan(insert=(NewRow({"name": "ACME Corp"}),))
    old = row({"name": "ACME"})
    assert decide(e, [old]) == Plan(close=(old,), insert=(NewRow({"name": "ACME Corp"}),))
    assert decide(ev("organization", {"org_id": 7}, "delete"), [old]) == Plan(close=(old,))


def test_static_entities_refuse_changes_but_allow_delete_and_recreate() -> None:
    key = {"node_id": 1, "source_id": "/S1/M1"}
    create = ev("source", key, "upsert", {"equipment_id": "hp-1"})
    assert decide(create, []) == Plan(insert=(NewRow({"equipment_id": "hp-1"}),))
    existing = row({"equipment_id": "hp-1"})
    assert decide(create, [existing]).__class__ is Plan  # restating: no change
    assert decide(create, [existing]) == Plan()
    change = ev("source", key, "upsert", {"equipment_id": "hp-2"})
    refused = decide(change, [existing])
    assert isinstance(refused, Refusal) and refused.rule == "static.immutable"
    assert decide(ev("source", key, "delete"), [existing]) == Plan(close=(existing,))
    assert decide(change, []) == Plan(insert=(NewRow({"equipment_id": "hp-2"}),))


def test_history_aware_changes_make_versions() -> None:
    key = {"site_id": "s1"}
    old = row({"name": "Old"})
    e = ev("site", key, "upsert", {"name": "New"})
    assert decide(e, [old]) == Plan(close=(old,), insert=(NewRow({"name": "New"}),))
    assert decide(ev("site", key, "upsert", {"name": "Old"}), [old]) == Plan()
    gone = decide(ev("site", key, "delete"), [])
    assert isinstance(gone, Refusal) and gone.rule == "entity.not_found"


def test_a_restatement_is_judged_as_jsonb_stores_values() -> None:
    """A current row may come back from jsonb (1e23 as 10**23); true is never the number 1."""
    key = {"site_id": "s1"}
    stored = row({"name": "Farm", "area_m2": 10**23, "floors": 2})
    assert decide(ev("site", key, "upsert", {"name": "Farm", "area_m2": 1e23, "floors": 2.0}), [stored]) == Plan()
    heated = row({"name": "Farm", "heated": True})
    one = ev("site", key, "upsert", {"name": "Farm", "heated": 1})
    assert decide(one, [heated]) == Plan(close=(heated,), insert=(NewRow({"name": "Farm", "heated": 1}),))


# --- time-dependent ---------------------------------------------------------------------------

JAN, FEB, MAR, APR, MAY = (t(f"2024-0{m}-01T00:00:00") for m in range(1, 6))


def iv(a: datetime | None, b: datetime | None) -> Interval:
    return Interval(a, b)


def tz(op: str, zone: str | None, vf: datetime | None, vt: datetime | None) -> MetadataEvent:
    def s(x: datetime | None) -> str | None:
        return None if x is None else x.isoformat()

    return ev(TZ, N1, op, None if zone is None else {"tz": zone}, s(vf), s(vt))


def test_interval_semantics_are_half_open() -> None:
    assert iv(JAN, FEB).overlaps(iv(JAN, MAR))
    assert not iv(JAN, FEB).overlaps(iv(FEB, MAR))  # adjacent: no overlap
    assert iv(None, None).overlaps(iv(MAR, None))
    assert iv(None, FEB).contains(t("1990-01-01T00:00:00"))
    assert not iv(JAN, FEB).contains(FEB)
    with pytest.raises(ValueError):
        Interval(FEB, FEB)


def test_set_valid_refuses_overlap_and_allows_adjacent() -> None:
    cur = [row({"tz": "UTC"}, iv(JAN, FEB))]
    assert decide(tz("set_valid", "CET", FEB, None), cur) == Plan(insert=(NewRow({"tz": "CET"}, iv(FEB, None)),))
    for vf, vt in [(JAN, FEB), (None, t("2024-01-15T00:00:00")), (t("2024-01-31T00:00:00"), None)]:
        r = decide(tz("set_valid", "CET", vf, vt), cur)
        assert isinstance(r, Refusal) and r.rule == "valid.overlap", (vf, vt)
    r = decide(tz("set_valid", "CET", None, None), cur)
    assert isinstance(r, Refusal) and "2024-01-01T00:00:00Z" in r.message


def test_correct_needs_the_exact_interval() -> None:
    a = row({"tz": "UTC"}, iv(JAN, FEB), 1)
    b = row({"tz": "CET"}, iv(FEB, None), 2)
    assert decide(tz("correct", "Europe/Oslo", FEB, None), [a, b]) == Plan(
        close=(b,), insert=(NewRow({"tz": "Europe/Oslo"}, iv(FEB, None)),)
    )
    r = decide(tz("correct", "Europe/Oslo", FEB, MAR), [a, b])
    assert isinstance(r, Refusal) and r.rule == "valid.not_found"
    assert decide(tz("correct", "UTC", JAN, FEB), [a, b]) == Plan()


def test_close_moves_an_end_without_overlap() -> None:
    a = row({"tz": "UTC"}, iv(JAN, None), 1)
    assert decide(tz("close", None, JAN, MAR), [a]) == Plan(close=(a,), insert=(NewRow({"tz": "UTC"}, iv(JAN, MAR)),))
    a2 = row({"tz": "UTC"}, iv(JAN, FEB), 1)
    b = row({"tz": "CET"}, iv(MAR, None), 2)
    assert decide(tz("close", None, JAN, MAR), [a2, b]) == Plan(
        close=(a2,), insert=(NewRow({"tz": "UTC"}, iv(JAN, MAR)),)
    )  # extend up to the next
    r = decide(tz("close", None, JAN, APR), [a2, b])
    assert isinstance(r, Refusal) and r.rule == "valid.overlap"
    r = decide(tz("close", None, FEB, APR), [a2, b])
    assert isinstance(r, Refusal) and r.rule == "valid.not_found"
    assert decide(tz("close", None, JAN, FEB), [a2, b]) == Plan()


def test_replace_trims_and_splits_what_it_covers() -> None:
    whole = row({"tz": "UTC"}, iv(None, None), 1)
    plan = decide(tz("replace", "CET", FEB, MAR), [whole])
    assert plan == Plan(
        close=(whole,),
        insert=(
            NewRow({"tz": "UTC"}, iv(None, FEB)),
            NewRow({"tz": "CET"}, iv(FEB, MAR)),
            NewRow({"tz": "UTC"}, iv(MAR, None)),
        ),
    )
    a = row({"tz": "A"}, iv(JAN, FEB), 1)
    b = row({"tz": "B"}, iv(FEB, APR), 2)
    c = row({"tz": "C"}, iv(APR, None), 3)
    plan = decide(tz("replace", "Asia/Tokyo", t("2024-01-15T00:00:00"), MAY), [a, b, c])
    assert plan == Plan(
        close=(a, b, c),
        insert=(
            NewRow({"tz": "A"}, iv(JAN, t("2024-01-15T00:00:00"))),
            NewRow({"tz": "Asia/Tokyo"}, iv(t("2024-01-15T00:00:00"), MAY)),
            NewRow({"tz": "C"}, iv(MAY, None)),
        ),
    )
    # nothing overlapping: a plain insert
    assert decide(tz("replace", "Asia/Tokyo", None, JAN), [a, b, c]) == Plan(
        insert=(NewRow({"tz": "Asia/Tokyo"}, iv(None, JAN)),)
    )


def test_delete_one_interval_or_all() -> None:
    a = row({"tz": "A"}, iv(None, FEB), 1)
    b = row({"tz": "B"}, iv(FEB, None), 2)
    assert decide(tz("delete", None, None, FEB), [a, b]) == Plan(close=(a,))
    assert decide(tz("delete", None, None, None), [a, b]) == Plan(close=(a, b))
    r = decide(tz("delete", None, JAN, FEB), [a, b])
    assert isinstance(r, Refusal) and r.rule == "valid.not_found"
    r = decide(tz("delete", None, None, None), [])
    assert isinstance(r, Refusal) and r.rule == "entity.not_found"


# --- values ----------------------------------------------------------------------------------


def refusal_rule(e: MetadataEvent) -> str | None:
    r = decide(e, [])
    return r.rule if isinstance(r, Refusal) else None


def test_value_rules() -> None:
    assert refusal_rule(tz("set_valid", "Mars/Olympus", None, None)) == "value.time_zone"
    assert (
        refusal_rule(ev("site", {"site_id": "s"}, "upsert", {"name": "x", "location": {"lat": 91, "lon": 0}}))
        == "value.range"
    )
    assert refusal_rule(ev("organization", {"org_id": 1}, "upsert", {})) == "value.missing"
    assert refusal_rule(ev("equipment", {"equipment_id": "e"}, "upsert", {"site_id": "s", "kind": "heat_pump"})) is None
    key = {"datamodel": "health", "datastream": "health.heart.rate"}
    assert refusal_rule(ev("datastream_template", key, "set_valid", {"qrating": QRATING})) is None
    broken = {**QRATING, "ideal": {"value": 99, "label": "IDEAL"}}
    assert refusal_rule(ev("datastream_template", key, "set_valid", {"qrating": broken})) == "qrating.order"
    assert (
        refusal_rule(ev("datastream_template", key, "set_valid", {"storage": {"period": "WEEKS", "total": 1}}))
        == "storage.period"
    )
    assert (
        refusal_rule(ev("datastream_template", key, "set_valid", {"storage": {"period": "NEVER", "total": 1}}))
        == "storage.total"
    )
    assert (
        refusal_rule(ev("datastream_template", key, "set_valid", {"storage": {"period": "DAYS", "total": 30}})) is None
    )


def test_binding_values_use_the_binding_parser() -> None:
    key = {"node_id": 1, "source_pattern": "/S1/**", "valid_from_ms": None}
    assert (
        refusal_rule(ev("source_binding", key, "upsert", {"datamodel": "health", "properties": {"rate": "h.rate"}}))
        is None
    )
    assert (
        refusal_rule(ev("source_binding", key, "upsert", {"datamodel": "health", "propertys": {}})) == "binding.invalid"
    )
    assert (
        refusal_rule(ev("source_binding", key, "upsert", {"datamodel": "health", "node_id": 2}))
        == "binding.key_in_value"
    )


HEALTH = health_model(QRATING)


def test_datamodel_values_use_the_datamodel_parser() -> None:
    key = {"identifier": "health"}
    assert refusal_rule(ev("datamodel", key, "upsert", HEALTH)) is None
    assert refusal_rule(ev("datamodel", key, "upsert", {**HEALTH, "categories": 3})) == ("datamodel.invalid")
    assert refusal_rule(ev("datamodel", {"identifier": "other"}, "upsert", HEALTH)) == ("datamodel.key_mismatch")


def test_without_the_datamodel_parser_nothing_is_taken_in_unchecked() -> None:
    """Datamodel and binding values are checked by their own parsers, imported plainly: without
    them processors.metadata does not import, so the history log cannot apply an unchecked
    document (they were loaded through importlib, and each event refused when that failed)."""
    probe = (
        "import sys\n"
        "sys.modules['processors.datamodel'] = None  # as if the parser were not installed\n"
        "try:\n"
        "    import processors.metadata\n"
        "except ImportError as e:\n"
        "    print('refused to import:', e.name)\n"
        "else:\n"
        "    print('imported')\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "refused to import: processors.datamodel"


def test_references_name_the_entities_a_value_needs() -> None:
    e = ev(
        "source_binding",
        {"node_id": 3, "source_pattern": "/a", "valid_from_ms": None},
        "upsert",
        {"datamodel": "health"},
    )
    assert references(e) == [("datamodel", {"identifier": "health"}), ("node", {"node_id": 3})]
    any_node = ev(
        "source_binding",
        {"node_id": None, "source_pattern": "/a", "valid_from_ms": None},
        "upsert",
        {"datamodel": "health"},
    )
    assert references(any_node) == [("datamodel", {"identifier": "health"})]
    assert references(ev("equipment", {"equipment_id": "e"}, "upsert", {"site_id": "s1", "kind": "heat_pump"})) == [
        ("site", {"site_id": "s1"})
    ]
    assert references(ev("site", {"site_id": "s"}, "delete")) == []


def test_catalog_picks_the_interval_of_the_data_time() -> None:
    cat = MetadataCatalog(
        as_of=MAY,
        tx_high_water=9,
        datamodels={
            "health": DatamodelEntry(
                "health",
                HEALTH,
                {
                    "health.heart.rate": (
                        TimedValue(iv(None, MAR), {"qrating": QRATING}),
                        TimedValue(iv(MAR, None), {"storage": {"period": "DAYS", "total": 7}}),
                    )
                },
            )
        },
        bindings=(),
        node_timezones={1: (TimedValue(iv(JAN, MAR), {"tz": "UTC"}), TimedValue(iv(MAR, None), {"tz": "Europe/Oslo"}))},
    )
    assert value_at(cat.node_timezones[1], FEB) == {"tz": "UTC"}
    assert value_at(cat.node_timezones[1], MAR) == {"tz": "Europe/Oslo"}
    assert value_at(cat.node_timezones[1], t("2023-06-01T00:00:00")) is None
    assert 2 not in cat.node_timezones
    assert cat.template_at("health", "health.heart.rate", FEB) == {"qrating": QRATING}
    assert cat.template_at("health", "health.heart.rate", APR) == {"storage": {"period": "DAYS", "total": 7}}
    assert cat.datamodels["health"].version == "1.2"


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("value", {"value": {"name": "a\x00b"}}),
        ("value", {"value": {"name": "a", "tags": ["ok", "b\x00"]}}),
        ("value", {"value": {"na\x00me": "a"}}),
        ("key", {"key": {"node_id": 1, "x\x00": 2}}),
        ("comment", {"comment": "why\x00"}),
    ],
)
def test_a_nul_character_is_refused_before_it_reaches_the_store(field: str, change: dict[str, Any]) -> None:
    """jsonb and text cannot hold U+0000: such an event used to raise in the store (and drop a
    whole import batch); now it is refused, naming the field."""
    with pytest.raises(MetadataEventError) as caught:
        parse_event({**raw("node", {"node_id": 1}, "upsert", {"name": "a"}), **change})
    assert (caught.value.field, caught.value.rule) == (field, "event.nul_character")
