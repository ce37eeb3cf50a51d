"""Datamodel parsing: one broken variant of a valid datamodel per rule of the template format."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from processors.binding import load_catalog
from processors.datamodel import (
    NOT_STORED,
    DatamodelError,
    Storage,
    StoragePlan,
    load_datamodels_file,
    parse_datamodel,
    parse_datamodels,
    ttl_days,
)

SAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "datamodels"

Doc = dict[str, Any]


def valid_doc() -> Doc:
    return {
        "identifier": "health",
        "name": "health name",
        "description": "health description",
        "version": "1.2",
        "allowedResourceTypes": ["entity.device"],
        "categories": [
            {
                "identifier": "heart",
                "name": "heart name",
                "datastreams": [
                    {
                        "identifier": "health.heart.rate",
                        "name": "health.heart.rate name",
                        "description": "health.heart.rate description",
                        "period": "INSTANT",
                        "schema": {"type": "number", "minimum": 0},
                        "unit": {"type": "SI", "label": "beats/second", "symbol": "bpm"},
                        "access": "READ",
                        "storage": {"period": "DAYS", "total": 30},
                        "tags": ["health", "heart"],
                        "modifiable": True,
                        "required": False,
                        "icon": {"class": "fas fa-heart"},
                        "views": {"anything": ["goes", 1]},
                        "qrating": {
                            "version": "1.0.0",
                            "min_required": {"value": -5, "label": "FROZEN"},
                            "min_desired": {"value": 5, "label": "COLD"},
                            "ideal": {"value": 25, "label": "NORMAL/IDEAL"},
                            "max_desired": {"value": 35, "label": "HIGH"},
                            "max_allowed": {"value": 60, "label": "HOT"},
                            "max_score": 1000,
                        },
                    },
                    {
                        "identifier": "health.heart.counter",
                        "name": "beats",
                        "description": "beats since power on",
                        "period": "CUMULATIVE",
                        "schema": {"type": "integer"},
                    },
                ],
            }
        ],
    }


def ds(doc: Doc, index: int = 0) -> Doc:
    stream: Doc = doc["categories"][0]["datastreams"][index]
    return stream


def setter(key: str, value: object) -> Callable[[Doc], None]:
    def apply(doc: Doc) -> None:
        ds(doc)[key] = value

    return apply


def deleter(key: str) -> Callable[[Doc], None]:
    def apply(doc: Doc) -> None:
        del ds(doc)[key]

    return apply


def model_deleter(key: str) -> Callable[[Doc], None]:
    def apply(doc: Doc) -> None:
        del doc[key]

    return apply


def qr(key: str, value: object) -> Callable[[Doc], None]:
    def apply(doc: Doc) -> None:
        if value is None:
            del ds(doc)["qrating"][key]
        else:
            ds(doc)["qrating"][key] = value

    return apply


def second_copy(doc: Doc) -> None:
    doc["categories"][0]["datastreams"].append(copy.deepcopy(ds(doc)))


def model_setter(key: str, value: object) -> Callable[[Doc], None]:
    def apply(doc: Doc) -> None:
        doc[key] = value

    return apply


def category_setter(key: str, value: object) -> Callable[[Doc], None]:
    def apply(doc: Doc) -> None:
        if value is None:
            del doc["categories"][0][key]
        else:
            doc["categories"][0][key] = value

    return apply


def second_category(doc: Doc) -> None:
    doc["categories"].append({"identifier": "heart", "name": "again", "datastreams": []})


def stream_replaced(value: object) -> Callable[[Doc], None]:
    def apply(doc: Doc) -> None:
        doc["categories"][0]["datastreams"][0] = value

    return apply


DS = "health.heart.rate"
# (case id, mutation, rule, datastream named, field named)
BROKEN: list[tuple[str, Callable[[Doc], None], str, str | None, str | None]] = [
    ("dm-identifier", model_deleter("identifier"), "datamodel.required", None, "identifier"),
    ("dm-name", model_deleter("name"), "datamodel.required", None, "name"),
    ("dm-description", model_deleter("description"), "datamodel.required", None, "description"),
    ("dm-categories", model_deleter("categories"), "datamodel.required", None, "categories"),
    ("dm-categories-type", model_setter("categories", {}), "datamodel.field_type", None, "categories"),
    ("dm-name-empty", model_setter("name", " "), "datamodel.field_type", None, "name"),
    (
        "dm-resource-types",
        model_setter("allowedResourceTypes", "entity.device"),
        "datamodel.field_type",
        None,
        "allowedResourceTypes",
    ),
    ("dm-unknown", model_setter("views", []), "datamodel.unknown_field", None, "views"),
    ("cat-type", model_setter("categories", ["heart"]), "category.type", None, "categories[0]"),
    (
        "cat-identifier",
        category_setter("identifier", None),
        "category.required",
        None,
        "categories[0].identifier",
    ),
    ("cat-name", category_setter("name", None), "category.required", None, "categories[0].name"),
    (
        "cat-unknown",
        category_setter("streams", []),
        "category.unknown_field",
        None,
        "categories[0].streams",
    ),
    (
        "cat-datastreams-type",
        category_setter("datastreams", {}),
        "category.field_type",
        None,
        "categories[0].datastreams",
    ),
    (
        "cat-duplicate",
        second_category,
        "category.duplicate",
        None,
        "categories[1].identifier",
    ),
    ("ds-type", stream_replaced("health.heart.rate"), "datastream.type", None, None),
    ("ds-identifier", deleter("identifier"), "datastream.required", None, "identifier"),
    ("ds-name", deleter("name"), "datastream.required", DS, "name"),
    ("ds-description", deleter("description"), "datastream.required", DS, "description"),
    ("ds-name-type", setter("name", 7), "datastream.field_type", DS, "name"),
    ("duplicate-in-doc", second_copy, "datastream.identifier.duplicate", DS, "identifier"),
    (
        "prefix-device",
        setter("identifier", "device.temperature"),
        "datastream.identifier.reserved_prefix",
        "device.temperature",
        "identifier",
    ),
    (
        "prefix-provision",
        setter("identifier", "provision.device.x"),
        "datastream.identifier.reserved_prefix",
        "provision.device.x",
        "identifier",
    ),
    (
        "underscore",
        setter("identifier", "health.heart_rate"),
        "datastream.identifier.underscore",
        "health.heart_rate",
        "identifier",
    ),
    ("period", setter("period", "HOURLY"), "datastream.period.invalid", DS, "period"),
    ("access", setter("access", "WRITE,READ"), "datastream.access.invalid", DS, "access"),
    ("schema-missing", deleter("schema"), "datastream.required", DS, "schema"),
    ("schema-not-object", setter("schema", "number"), "datastream.schema.invalid", DS, "schema"),
    (
        "schema-bad-type",
        setter("schema", {"type": "numbr"}),
        "datastream.schema.invalid",
        DS,
        "schema/type",
    ),
    (
        "schema-bad-minimum",
        setter("schema", {"type": "number", "minimum": "0"}),
        "datastream.schema.invalid",
        DS,
        "schema/minimum",
    ),
    (
        "schema-remote-ref",
        setter("schema", {"$ref": "https://example.com/s.json"}),
        "datastream.schema.remote_ref",
        DS,
        "schema",
    ),
    (
        "schema-unresolvable-ref",
        setter("schema", {"$ref": "#/$defs/nope"}),
        "datastream.schema.unsupported",
        DS,
        "schema",
    ),
    ("storage-type", setter("storage", "DAYS"), "datastream.storage.type", DS, "storage"),
    (
        "storage-unknown",
        setter("storage", {"period": "DAYS", "total": 1, "unit": "d"}),
        "datastream.storage.unknown_field",
        DS,
        "storage.unit",
    ),
    (
        "storage-period",
        setter("storage", {"period": "WEEKS", "total": 2}),
        "datastream.storage.period.invalid",
        DS,
        "storage.period",
    ),
    (
        "storage-total-without-period",
        setter("storage", {"total": 2}),
        "datastream.storage.total_without_period",
        DS,
        "storage.total",
    ),
    (
        "storage-never-with-total",
        setter("storage", {"period": "NEVER", "total": 2}),
        "datastream.storage.never_with_total",
        DS,
        "storage.total",
    ),
    (
        "storage-total-missing",
        setter("storage", {"period": "DAYS"}),
        "datastream.storage.total_missing",
        DS,
        "storage.total",
    ),
    (
        "storage-total-negative",
        setter("storage", {"period": "DAYS", "total": -1}),
        "datastream.storage.total.invalid",
        DS,
        "storage.total",
    ),
    (
        "storage-total-float",
        setter("storage", {"period": "DAYS", "total": 1.5}),
        "datastream.storage.total.invalid",
        DS,
        "storage.total",
    ),
    (
        "storage-exceeds-plan",
        setter("storage", {"period": "YEARS", "total": 2}),
        "datastream.storage.exceeds_plan",
        DS,
        "storage",
    ),
    ("unit-type", setter("unit", {"symbol": 3}), "datastream.unit.type", DS, "unit.symbol"),
    (
        "unit-unknown",
        setter("unit", {"sign": "x"}),
        "datastream.unit.unknown_field",
        DS,
        "unit.sign",
    ),
    ("modifiable", setter("modifiable", "yes"), "datastream.field_type", DS, "modifiable"),
    ("calculated", setter("calculated", 1), "datastream.field_type", DS, "calculated"),
    ("required", setter("required", None), "datastream.field_type", DS, "required"),
    ("icon", setter("icon", {"class": 5}), "datastream.icon.type", DS, "icon.class"),
    ("tags-type", setter("tags", "health"), "datastream.tags.type", DS, "tags"),
    ("tag-type", setter("tags", ["ok", 5]), "datastream.tags.type", DS, "tags[1]"),
    ("tag-too-long", setter("tags", ["x" * 51]), "datastream.tags.too_long", DS, "tags[0]"),
    ("qrating-incomplete", qr("ideal", None), "qrating.incomplete", DS, "qrating.ideal"),
    (
        "qrating-order",
        qr("ideal", {"value": 50, "label": "IDEAL"}),
        "qrating.order",
        DS,
        "qrating.max_desired",
    ),
    (
        "qrating-label",
        qr("ideal", {"value": 25, "label": "L" * 51}),
        "qrating.label_too_long",
        DS,
        "qrating.ideal.label",
    ),
    ("qrating-type", setter("qrating", [1]), "qrating.type", DS, "qrating"),
    ("unknown-field", setter("acess", "WRITE"), "datastream.unknown_field", DS, "acess"),
]

PLAN = StoragePlan("YEARS", 1)


@pytest.mark.parametrize(
    ("mutate", "rule", "datastream", "field"),
    [pytest.param(m, r, d, f, id=i) for i, m, r, d, f in BROKEN],
)
def test_each_rule_refuses_its_broken_variant(
    mutate: Callable[[Doc], None], rule: str, datastream: str | None, field: str | None
) -> None:
    doc = valid_doc()
    parse_datamodel(doc, plan=PLAN)  # the unbroken one is fine
    mutate(doc)
    with pytest.raises(DatamodelError) as caught:
        parse_datamodel(doc, plan=PLAN)
    err = caught.value
    assert (err.rule, err.datastream, err.field) == (rule, datastream, field)
    text = str(err)
    assert f"[{rule}]" in text
    if "identifier" in doc:
        assert err.datamodel == "health"
        assert "'health'" in text
    if datastream is not None:
        assert repr(datastream) in text
    if field is not None:
        assert repr(field) in text


def test_valid_doc_parses_with_defaults() -> None:
    model = parse_datamodel(valid_doc(), plan=PLAN)
    assert model.identifier == "health"
    assert model.allowed_resource_types == ("entity.device",)
    rate, counter = list(model.datastreams)
    assert rate.qrating is not None and rate.qrating.ideal.value == 25
    assert rate.unit.symbol == "bpm" and rate.icon_class == "fas fa-heart"
    assert rate.storage == Storage("DAYS", 30)
    assert counter.period == "CUMULATIVE"
    # defaults from the template description
    assert counter.access == "READ" and not counter.writable
    assert counter.modifiable and not counter.calculated and not counter.required
    assert counter.storage is None and counter.unit.type == "" and counter.tags == ()
    assert model.datastream("health.heart.counter") is counter


def test_defaults_period_and_access() -> None:
    doc = valid_doc()
    del ds(doc)["period"]
    del ds(doc)["access"]
    template = next(parse_datamodel(doc).datastreams)
    assert (template.period, template.access) == ("INSTANT", "READ")


def test_identifier_unique_per_organization() -> None:
    with pytest.raises(DatamodelError) as caught:
        parse_datamodel(valid_doc(), organization_identifiers={"health.heart.counter"})
    assert caught.value.rule == "datastream.identifier.duplicate"
    assert caught.value.datastream == "health.heart.counter"


def test_identifier_unique_across_datamodels_of_one_list() -> None:
    other = valid_doc()
    other["identifier"] = "health2"
    for stream in other["categories"][0]["datastreams"]:
        stream["identifier"] = stream["identifier"].replace("health", "fitness")
    assert len(parse_datamodels([valid_doc(), other])) == 2
    other["categories"][0]["datastreams"][1]["identifier"] = "health.heart.counter"
    with pytest.raises(DatamodelError) as caught:
        parse_datamodels([valid_doc(), other])
    assert (caught.value.rule, caught.value.datamodel) == (
        "datastream.identifier.duplicate",
        "health2",
    )


def test_unknown_datamodel_field_refused() -> None:
    doc = valid_doc()
    doc["categorys"] = []
    with pytest.raises(DatamodelError, match=r"datamodel\.unknown_field"):
        parse_datamodel(doc)


@pytest.mark.parametrize(
    ("storage", "plan", "days"),
    [
        (Storage("DAYS", 30), None, 30),
        (Storage("MONTHS", 1), None, 31),  # 30.4375 rounded up
        (Storage("YEARS", 2), None, 731),
        (Storage("NEVER"), None, NOT_STORED),
        (None, StoragePlan("MONTHS", 12), 366),
        (None, None, None),
    ],
)
def test_ttl_days(storage: Storage | None, plan: StoragePlan | None, days: int | str | None) -> None:
    assert ttl_days(storage, plan) == days


def test_twelve_months_fit_a_one_year_plan_and_back() -> None:
    for storage, plan in (
        ({"period": "MONTHS", "total": 12}, StoragePlan("YEARS", 1)),
        ({"period": "YEARS", "total": 1}, StoragePlan("MONTHS", 12)),
        ({"period": "NEVER"}, StoragePlan("DAYS", 1)),
    ):
        doc = valid_doc()
        ds(doc)["storage"] = storage
        parse_datamodel(doc, plan=plan)
    doc = valid_doc()
    ds(doc)["storage"] = {"period": "DAYS", "total": 31}
    with pytest.raises(DatamodelError, match="exceeds_plan"):
        parse_datamodel(doc, plan=StoragePlan("MONTHS", 1))


def test_file_with_a_list_is_refused_whole(tmp_path: Path) -> None:
    good = valid_doc()
    bad = valid_doc()
    bad["identifier"] = "other"
    for stream in bad["categories"][0]["datastreams"]:
        stream["identifier"] = stream["identifier"].replace("health", "other")
    ds(bad)["period"] = "WEEKLY"
    path = tmp_path / "models.json"
    path.write_text(json.dumps([good, bad]))
    with pytest.raises(DatamodelError, match="datastream.period.invalid"):
        load_datamodels_file(path)
    del ds(bad)["period"]
    path.write_text(json.dumps([good, bad]))
    assert [m.identifier for m in load_datamodels_file(path)] == ["health", "other"]
    path.write_text(json.dumps(good))
    assert [m.identifier for m in load_datamodels_file(path)] == ["health"]  # one object, not a list


def test_sample_datamodels_load() -> None:
    catalog = load_catalog(SAMPLES, plan=StoragePlan("YEARS", 5))
    assert set(catalog.datamodels) == {"energy-meter", "pv-inverter", "weather-station", "gshp"}
    templates = [t for m in catalog.datamodels.values() for t in m.datastreams]
    assert any(t.qrating and t.qrating.cumulative_period_divisor for t in templates)
    assert any(t.qrating and t.qrating.conversion_matrix for t in templates)
    assert any(t.writable for t in templates)
    assert {t.period for t in templates} == {"INSTANT", "CUMULATIVE", "PULSE"}
    with pytest.raises(DatamodelError, match="exceeds_plan"):
        load_catalog(SAMPLES, plan=StoragePlan("YEARS", 1))


def test_datamodel_identifier_unique_in_a_list() -> None:
    other = valid_doc()
    for stream in other["categories"][0]["datastreams"]:
        stream["identifier"] = stream["identifier"].replace("health", "other")
    with pytest.raises(DatamodelError) as caught:
        parse_datamodels([valid_doc(), other])
    assert (caught.value.rule, caught.value.datamodel) == ("datamodel.duplicate", "health")


def test_bad_json_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(DatamodelError, match=r"file\.json"):
        load_datamodels_file(path)
