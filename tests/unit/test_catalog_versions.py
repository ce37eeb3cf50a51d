"""A datum is validated with the template version valid at its own created time."""

from __future__ import annotations

from datetime import UTC, datetime

from processors.catalog_versions import VersionedCatalog, build_versioned_catalog
from processors.metadata import DatamodelEntry, Interval, MetadataCatalog, TimedValue

QR = {
    "version": "1",
    "max_score": 10,
    "min_required": {"value": 0, "label": "a"},
    "min_desired": {"value": 1, "label": "b"},
    "ideal": {"value": 2, "label": "c"},
    "max_desired": {"value": 3, "label": "d"},
    "max_allowed": {"value": 4, "label": "e"},
}
DOC = {
    "identifier": "m",
    "name": "m",
    "description": "m",
    "version": "1",
    "categories": [
        {
            "identifier": "c",
            "name": "c",
            "datastreams": [
                {"identifier": "m.x", "name": "x", "description": "x", "schema": {"type": "number"}, "qrating": QR}
            ],
        }
    ],
}
CHANGE = datetime(2024, 1, 1, tzinfo=UTC)
CHANGE_MS = int(CHANGE.timestamp() * 1000)


def meta(templates: dict) -> MetadataCatalog:  # type: ignore[type-arg]
    return MetadataCatalog(
        as_of=datetime(2025, 1, 1, tzinfo=UTC),
        tx_high_water=7,
        datamodels={"m": DatamodelEntry("m", DOC, templates)},
        bindings=({"node_id": None, "source_pattern": "/**", "datamodel": "m", "properties": {}},),
        node_timezones={1: (TimedValue(Interval(CHANGE, None), {"tz": "America/New_York"}),)},
    )


def ideal_at(cat: VersionedCatalog, ms: int) -> float:
    model = cat.at(ms).datamodels["m"]
    q = model.datastream("m.x").qrating  # type: ignore[union-attr]
    assert q is not None
    return q.ideal.value


def test_template_interval_splits_data_time() -> None:
    newer = {**QR, "ideal": {"value": 3, "label": "c"}, "max_desired": {"value": 3.5, "label": "d"}}
    cat = build_versioned_catalog(meta({"m.x": (TimedValue(Interval(CHANGE, None), {"qrating": newer}),)}))
    assert cat.version == 7 and cat.bounds_ms == (CHANGE_MS,)
    assert ideal_at(cat, CHANGE_MS - 1) == 2.0  # before: the datamodel's own qrating
    assert ideal_at(cat, CHANGE_MS) == 3.0  # half-open: the change holds from its start
    assert cat.at(0).resolve(1, "/any") is not None


def test_no_template_versions_is_one_catalog() -> None:
    cat = build_versioned_catalog(meta({}))
    assert cat.bounds_ms == () and len(cat.catalogs) == 1 and ideal_at(cat, 0) == 2.0


def test_broken_overlay_is_reported_not_used() -> None:
    bad = {"qrating": {**QR, "ideal": {"value": 99, "label": "c"}}}  # out of order
    cat = build_versioned_catalog(meta({"m.x": (TimedValue(Interval(CHANGE, None), bad),)}))
    assert "m" not in cat.at(CHANGE_MS).datamodels
    assert [p.what for p in cat.problems] == ["datamodel m"]
    assert ideal_at(cat, CHANGE_MS - 1) == 2.0


def test_node_time_zone_by_data_time() -> None:
    cat = build_versioned_catalog(meta({}))
    assert cat.timezone_at(1, CHANGE_MS - 1) == "UTC"
    assert cat.timezone_at(1, CHANGE_MS) == "America/New_York"
    assert cat.timezone_at(2, CHANGE_MS) == "UTC"
