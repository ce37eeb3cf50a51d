"""Set operations: only WRITE datastreams, only values their schema accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from processors.binding import Binding, Catalog, load_catalog
from processors.datamodel import parse_datamodel
from processors.datum import Rejection
from processors.setop import SetCommand, set_request

SAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "datamodels"


@pytest.fixture(scope="module")
def demo() -> Catalog:
    return load_catalog(SAMPLES)


def test_write_datastream_accepted_with_source(demo: Catalog) -> None:
    out = set_request(demo, 7, "energy.meter.relay", "open", source_id="/S1/B1/M1")
    assert out == SetCommand(7, "/S1/B1/M1", "energy.meter.relay", "open", "energy-meter")
    assert out.as_dict()["source_id"] == "/S1/B1/M1"


def test_write_only_datastream_accepted(demo: Catalog) -> None:
    out = set_request(demo, 7, "energy.meter.exportLimit", 5000, source_id="/S1/M1")
    assert isinstance(out, SetCommand) and out.value == 5000


def test_literal_binding_gives_the_source(demo: Catalog) -> None:
    out = set_request(demo, 2, "weather.station.temperature", 20.0)
    assert isinstance(out, Rejection) and out.rule == "set.not_writable"
    catalog = Catalog(demo.datamodels.values(), [*demo.bindings, Binding(4, "/S1/INV9", "pv-inverter")])
    out = set_request(catalog, 4, "pv.inverter.powerLimit", 50)
    assert out == SetCommand(4, "/S1/INV9", "pv.inverter.powerLimit", 50, "pv-inverter")


@pytest.mark.parametrize(
    ("node", "datastream", "value", "source", "rule"),
    [
        (7, "energy.meter.watts", 10.0, "/S1/M1", "set.not_writable"),
        (7, "energy.meter.nope", 1, "/S1/M1", "set.unknown_datastream"),
        (7, "energy.meter.relay", "ajar", "/S1/M1", "set.schema"),
        (7, "energy.meter.exportLimit", -1, "/S1/M1", "set.schema"),
        (7, "energy.meter.exportLimit", float("nan"), "/S1/M1", "set.non_finite"),
        (7, "energy.meter.relay", "open", "/S1/WX", "set.source_not_bound"),
        (7, "energy.meter.relay", "open", None, "set.source_unknown"),
        (7, "gshp.tstatSet", 60, "/otherm-data/x", "set.schema"),
    ],
)
def test_refusals(demo: Catalog, node: int, datastream: str, value: object, source: str | None, rule: str) -> None:
    out = set_request(demo, node, datastream, value, source_id=source)
    assert isinstance(out, Rejection)
    assert (out.rule, out.datastream) == (rule, datastream)
    assert out.as_dict()["rule"] == rule


def test_calculated_and_ambiguous() -> None:
    m = parse_datamodel(
        {
            "identifier": "m",
            "name": "m",
            "description": "m",
            "categories": [
                {
                    "identifier": "c",
                    "name": "c",
                    "datastreams": [
                        {
                            "identifier": "m.set",
                            "name": "n",
                            "description": "d",
                            "access": "WRITE",
                            "schema": {"type": "boolean"},
                        },
                        {
                            "identifier": "m.calc",
                            "name": "n",
                            "description": "d",
                            "access": "READ,WRITE",
                            "calculated": True,
                            "schema": {"type": "number"},
                        },
                    ],
                }
            ],
        }
    )
    catalog = Catalog([m], [Binding(1, "/a", "m"), Binding(1, "/b", "m")])
    out = set_request(catalog, 1, "m.set", True)
    assert isinstance(out, Rejection) and out.rule == "set.source_ambiguous"
    assert set_request(catalog, 1, "m.set", True, source_id="/a") == SetCommand(1, "/a", "m.set", True, "m")
    out = set_request(catalog, 1, "m.calc", 1.0, source_id="/a")
    assert isinstance(out, Rejection) and out.rule == "set.calculated"
