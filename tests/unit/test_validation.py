"""Per-sample validation against bound datastream templates; bindings and their resolution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from processors.binding import Binding, BindingError, Catalog, load_catalog
from processors.datamodel import Datamodel, parse_datamodel
from processors.datum import Datum
from processors.validation import validate

SAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "datamodels"
T0 = 1_700_000_000_000


@pytest.fixture(scope="module")
def demo() -> Catalog:
    return load_catalog(SAMPLES)


def stream(ident: str, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "identifier": ident,
        "name": ident,
        "description": ident,
        "schema": {"type": "number"},
    }
    doc.update(extra)
    return doc


def model(ident: str, *streams: dict[str, Any]) -> Datamodel:
    return parse_datamodel(
        {
            "identifier": ident,
            "name": ident,
            "description": ident,
            "categories": [{"identifier": "c", "name": "c", "datastreams": list(streams)}],
        }
    )


def rules(result: Any) -> list[tuple[str, str | None, str | None]]:
    return sorted((r.rule, r.property, r.datastream) for r in result.rejections)


# --- the demo catalog ----------------------------------------------------------------------


def test_valid_meter_datum_is_accepted_whole(demo: Catalog) -> None:
    datum = Datum(
        7,
        "/S1/B1/M1",
        T0,
        i={"watts": 2150.0, "voltage_a": 231.0, "voltage_b": 229.5, "frequency": 50.0},
        a={"wattHours": 6834834349.0},
        s={"mode": "auto", "relay": "closed"},
    )
    result = validate(datum, demo)
    assert result.rejections == []
    assert result.accepted is datum
    assert result.datamodel == "energy-meter"
    assert result.datastreams["voltage_a"].identifier == "energy.meter.voltageA"
    assert result.datastreams["watts"].identifier == "energy.meter.watts"
    assert len(result.datastreams) == 7


def test_mixed_meter_datum_keeps_valid_siblings(demo: Catalog) -> None:
    datum = Datum(
        7,
        "/S1/M2",
        T0,
        i={
            "watts": 2150.0,  # ok
            "frequency": 99.0,  # schema: maximum 70
            "wattHours": 5.0,  # CUMULATIVE sent as i
            "dailyEnergy": 3.0,  # calculated
            "phase": 1.0,  # unmapped
        },
        a={"wattHours": 10.0},  # ok
        s={"mode": "dancing", "relay": "open"},  # enum / ok
    )
    result = validate(datum, demo)
    assert rules(result) == [
        ("sample.calculated", "dailyEnergy", "energy.meter.dailyEnergy"),
        ("sample.period_mismatch", "wattHours", "energy.meter.wattHours"),
        ("sample.schema", "frequency", "energy.meter.frequency"),
        ("sample.schema", "mode", "energy.meter.mode"),
        ("sample.unmapped", "phase", None),
    ]
    assert result.accepted is not None
    assert dict(result.accepted.i) == {"watts": 2150.0}
    assert dict(result.accepted.a) == {"wattHours": 10.0}
    assert dict(result.accepted.s) == {"relay": "open"}
    assert set(result.datastreams) == {"watts", "wattHours", "relay"}
    bad = next(r for r in result.rejections if r.property == "frequency")
    assert (bad.kind, bad.value) == ("i", 99.0)
    assert bad.as_dict()["datastream"] == "energy.meter.frequency"


def test_required_missing_is_reported_and_siblings_stay(demo: Catalog) -> None:
    datum = Datum(7, "/S1/M3", T0, a={"wattHours": 1.0})
    result = validate(datum, demo)
    assert rules(result) == [("datum.required_missing", None, "energy.meter.watts")]
    assert result.accepted is datum


def test_all_samples_bad_means_nothing_accepted(demo: Catalog) -> None:
    datum = Datum(7, "/S1/WX", T0, i={"temperature": 500.0, "humidity": -3.0})
    result = validate(datum, demo)
    assert result.accepted is None
    assert [r.rule for r in result.rejections] == ["sample.schema", "sample.schema"]
    assert result.datastreams == {}


def test_unbound_source_passes_through(demo: Catalog) -> None:
    datum = Datum(7, "/S9/thing", T0, i={"whatever": float(10**9)}, s={"x": "y"})
    result = validate(datum, demo)
    assert result.accepted is datum
    assert result.rejections == [] and result.datastreams == {}
    assert result.datamodel is None and not result.bound


def test_otherm_fields_map_explicitly_and_sentinel_is_refused(demo: Catalog) -> None:
    fields = {
        "heatpump_power": 2100.0,
        "heatpump_aux": 0.0,
        "source_supplytemp": 8.5,
        "source_returntemp": 5.2,
        "source_tempdiff": 3.3,
        "sourcefluid_flowrate": 40.0,
        "sourcefluid_pump_power": 120.0,
        "load_pumpsfans": 200.0,
        "load_supplytemp": 40.0,
        "load_returntemp": 35.0,
        "load_tempdiff": 5.0,
        "tstat_set": 21.0,
        "tstat_temp": 20.5,
        "compressor_stage": 1.0,
        "outdoor_temperature": -999.0,  # oTherm's NaN sentinel
        "heat_flow_rate": 6000.0,
    }
    registers = {"loadside_heat": 6000.0, "sourceside_heat": 3900.0}  # CUMULATIVE Wh: a
    result = validate(Datum(3, "/otherm-data/1f0c", T0, i=fields, a=registers), demo)
    assert rules(result) == [("sample.schema", "outdoor_temperature", "gshp.outdoorTemperature")]
    assert result.accepted is not None and len(result.accepted.i) == 15
    assert dict(result.accepted.a) == registers
    assert result.datastreams["compressor_stage"].identifier == "gshp.compressorStage"


def test_weather_pulse_and_status(demo: Catalog) -> None:
    ok = Datum(1, "/S1/WX", T0, i={"temperature": 21.5, "rain": 3.0, "wspeed": 4.0, "atm": 101325.0})
    assert validate(ok, demo).rejections == []
    bad = Datum(1, "/S1/WX", T0, i={"temperature": 21.5, "rain": -1.0}, a={"wspeed": 3.0})
    assert rules(validate(bad, demo)) == [
        ("sample.period_mismatch", "wspeed", "weather.station.windSpeed"),
        ("sample.pulse_negative", "rain", "weather.station.rainTips"),
    ]


def test_batch_exact_counts(demo: Catalog) -> None:
    good = Datum(1, "/S1/INV1", T0, i={"watts": 5000.0, "dcVoltage": 600.0}, s={"state": "mppt"})
    half = Datum(1, "/S1/INV2", T0, i={"watts": 5000.0, "dcVoltage": 9000.0})
    empty = Datum(1, "/S1/INV3", T0, i={"watts": -5.0})
    loose = Datum(1, "/free/source", T0, i={"anything": 1.0})
    results = [validate(d, demo) for d in [good, half, empty, loose] * 25]
    assert sum(r.accepted is not None for r in results) == 75
    assert sum(len(r.rejections) for r in results) == 50
    assert sum(len(r.datastreams) for r in results) == 25 * (3 + 1 + 0 + 0)


# --- rules on a small catalog ----------------------------------------------------------------


def test_instant_accepts_i_and_s_but_not_a() -> None:
    m = model(
        "m",
        stream("m.num"),
        stream("m.text", schema={"type": "string"}),
        stream("m.both", schema={"type": ["number", "string"]}),
    )
    catalog = Catalog([m], [Binding(None, "src", "m")])
    result = validate(Datum(1, "src", T0, i={"num": 1.0, "text": 2.0}, a={"both": 1.0}, s={"both": "x"}), catalog)
    assert rules(result) == [
        ("sample.period_mismatch", "both", "m.both"),
        ("sample.schema", "text", "m.text"),
    ]


def test_non_finite_refused_even_if_schema_allows() -> None:
    catalog = Catalog([model("m", stream("m.v"))], [Binding(None, "src", "m")])
    result = validate(Datum(1, "src", T0, i={"v": float("nan")}), catalog)
    assert [r.rule for r in result.rejections] == ["sample.non_finite"]


def test_same_schema_compiled_once() -> None:
    from processors.datamodel import schema_validator

    a = model("a", stream("a.x", schema={"minimum": 0, "type": "number"}))
    b = model("b", stream("b.x", schema={"type": "number", "minimum": 0}))
    assert schema_validator(next(a.datastreams)) is schema_validator(next(b.datastreams))


def test_resolution_order_and_valid_from() -> None:
    m1 = model("m1", stream("m1.watts"))
    m2 = model("m2", stream("m2.watts"))
    m3 = model("m3", stream("m3.watts"))
    catalog = Catalog(
        [m1, m2, m3],
        [
            Binding(None, "/S1/**", "m1"),
            Binding(None, "/S1/**/M?", "m2"),
            Binding(5, "/S1/**", "m3"),  # per-node override beats specificity
            Binding(None, "/S1/B1/M1", "m3", valid_from_ms=T0),
        ],
    )
    assert catalog.resolve(1, "/S1/X").datamodel.identifier == "m1"  # type: ignore[union-attr]
    assert catalog.resolve(1, "/S1/B2/M1").datamodel.identifier == "m2"  # type: ignore[union-attr]
    assert catalog.resolve(5, "/S1/B2/M1").datamodel.identifier == "m3"  # type: ignore[union-attr]
    before = catalog.resolve(1, "/S1/B1/M1", T0 - 1)
    after = catalog.resolve(1, "/S1/B1/M1", T0)
    assert before is not None and before.datamodel.identifier == "m2"
    assert after is not None and after.datamodel.identifier == "m3"
    assert catalog.resolve(1, "/S2/M1") is None


def test_later_valid_from_wins_for_same_pattern() -> None:
    m1 = model("m1", stream("m1.watts"))
    m2 = model("m2", stream("m2.watts"))
    catalog = Catalog([m1, m2], [Binding(None, "/S1/M1", "m1"), Binding(None, "/S1/M1", "m2", valid_from_ms=T0)])
    assert catalog.resolve(1, "/S1/M1", T0 - 1).datamodel.identifier == "m1"  # type: ignore[union-attr]
    assert catalog.resolve(1, "/S1/M1", T0 + 1).datamodel.identifier == "m2"  # type: ignore[union-attr]
    assert catalog.resolve(1, "/S1/M1").datamodel.identifier == "m2"  # type: ignore[union-attr]


def test_default_mapping_rule() -> None:
    m = model("m", stream("m.a.temp"), stream("m.b.temp"), stream("m.watts"), stream("m.power"))
    catalog = Catalog([m], [Binding(None, "src", "m", {"W": "m.watts", "t2": "m.b.temp"})])
    resolved = catalog.resolve(1, "src")
    assert resolved is not None
    # explicit names win; an explicitly targeted datastream leaves the default rule;
    # "temp" became unambiguous once m.b.temp was claimed
    assert {p: t.identifier for p, t in resolved.targets.items()} == {
        "W": "m.watts",
        "t2": "m.b.temp",
        "temp": "m.a.temp",
        "power": "m.power",
    }
    ambiguous = Catalog([m], [Binding(None, "src", "m")]).resolve(1, "src")
    assert ambiguous is not None and "temp" not in ambiguous.targets


@pytest.mark.parametrize(
    ("binding", "rule"),
    [
        (Binding(None, "src", "nope"), "binding.unknown_datamodel"),
        (Binding(None, "src", "m", {"x": "m.nope"}), "binding.unknown_datastream"),
        (Binding(None, "src", "m", {"x": "m.v", "y": "m.v"}), "binding.duplicate_target"),
    ],
)
def test_bad_bindings(binding: Binding, rule: str) -> None:
    with pytest.raises(BindingError) as caught:
        Catalog([model("m", stream("m.v"))], [binding])
    assert caught.value.rule == rule
    assert rule in str(caught.value)
