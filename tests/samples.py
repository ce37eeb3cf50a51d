"""Sample data shared by several test modules (and the benchmarks): datamodels, metadata events,
oTherm's field names."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from processors.binding import Binding, Catalog
from processors.datamodel import parse_datamodel

# oTherm's field dictionary (gshp-analysis db_tools/influx_lp_writer.py): what its heat pumps
# report, the two cumulative heat meters last.
OTHERM_FIELDS = (
    "heatpump_power",
    "heatpump_aux",
    "source_supplytemp",
    "source_returntemp",
    "source_tempdiff",
    "sourcefluid_flowrate",
    "sourcefluid_pump_power",
    "load_pumpsfans",
    "load_supplytemp",
    "load_returntemp",
    "load_tempdiff",
    "tstat_set",
    "tstat_temp",
    "compressor_stage",
    "outdoor_temperature",
    "heat_flow_rate",
    "loadside_heat",
    "sourceside_heat",
)


# A qRating with a threshold at each level (no cumulative_period_divisor: add it for a CUMULATIVE
# datastream).
SEED_QRATING = {
    "version": "1.0.0",
    "max_score": 1000,
    "min_required": {"value": -5, "label": "FROZEN"},
    "min_desired": {"value": 5, "label": "COLD"},
    "ideal": {"value": 25, "label": "NORMAL"},
    "max_desired": {"value": 35, "label": "HIGH"},
    "max_allowed": {"value": 60, "label": "HOT"},
}


def stream(identifier: str, period: str = "INSTANT", schema: dict | None = None, **extra: object) -> dict:  # type: ignore[type-arg]
    """A datastream template named after its identifier; a number unless `schema` says otherwise."""
    return {
        "identifier": identifier,
        "name": identifier,
        "description": identifier,
        "period": period,
        "schema": schema or {"type": "number"},
        **extra,
    }


def datamodel(
    identifier: str, datastreams: Iterable[dict[str, Any]], description: str, version: str = "1", category: str = "c"
) -> dict[str, Any]:
    """A datamodel named after its identifier, its datastreams in one category."""
    return {
        "identifier": identifier,
        "name": identifier,
        "description": description,
        "version": version,
        "categories": [{"identifier": category, "name": category, "datastreams": list(datastreams)}],
    }


# The 'room' sample's properties and the datastreams they are bound to (room_catalog binds those of
# its datastreams).
ROOM_PROPERTIES = {
    "temperature": "room.temp",
    "energy": "room.energy",
    "mode": "room.mode",
    "debug": "room.debug",
    "rain": "room.rain",
    "cop": "room.cop",
}


def room_catalog(*datastreams: dict[str, Any]) -> Catalog:
    """The 'room' datamodel of these datastreams (room.temp, room.energy, ...: see ROOM_PROPERTIES),
    bound to /room/** for every node."""
    identifiers = [d["identifier"] for d in datastreams]
    assert set(identifiers) <= set(ROOM_PROPERTIES.values()), identifiers
    properties = {name: ident for name, ident in ROOM_PROPERTIES.items() if ident in identifiers}
    model = parse_datamodel(datamodel("room", datastreams, "a room"))
    return Catalog([model], [Binding(None, "/room/**", "room", properties)])


def health_model(qrating: dict[str, Any]) -> dict[str, Any]:
    """The 'health' datamodel: one datastream, heart rate, kept 30 days, scored by `qrating`."""
    return datamodel(
        "health",
        [
            {
                "identifier": "health.heart.rate",
                "name": "rate",
                "description": "beats per minute",
                "schema": {"type": "number"},
                "storage": {"period": "DAYS", "total": 30},
                "qrating": qrating,
            }
        ],
        description="heart monitoring",
        version="1.2",
        category="heart",
    )


def metadata_event(
    entity: str,
    key: dict[str, Any],
    op: str,
    value: dict[str, Any] | None = None,
    valid_from: str | None = None,
    valid_to: str | None = None,
    *,
    author: str = "test",
    comment: str = "integration test",
    produced_at: str = "2024-01-01T00:00:00Z",
    **extra: Any,
) -> dict[str, Any]:
    """A metadata event as `pipeline metadata apply` sends it, with a fresh event id; `extra` sets
    any other field (or adds one the schema does not know)."""
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "entity": entity,
        "key": key,
        "op": op,
        "value": value,
        "valid_from": valid_from,
        "valid_to": valid_to,
        "author": author,
        "comment": comment,
        "produced_at": produced_at,
    }
    event.update(extra)
    return event
