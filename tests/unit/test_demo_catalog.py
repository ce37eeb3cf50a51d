"""The simulator and the sample datamodels agree: every simulated datum validates, every sample
maps to a datastream of the right period, clean values are never critical and every injected
fault is refused by validation (each FAULT_VALUES entry breaks its datastream's schema)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from processors.binding import Catalog, load_catalog
from processors.datamodel import DatastreamTemplate
from processors.datum import Datum
from processors.qrating import RateState, Score, Scorer, next_rate
from processors.simulate import (
    DEFAULT_START_MS,
    FAULT_VALUES,
    YEAR_HOURS,
    Fleet,
    FleetSpec,
    Weather,
    WeatherSeries,
    default_tmy_path,
    load_tmy,
    synthetic_weather,
)
from processors.validation import KINDS_FOR_PERIOD, validate

SAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "datamodels"
HOUR = 3_600_000
DAY = 24 * HOUR
JUL_1_2024 = 1_719_792_000_000  # 2024-07-01T00:00:00Z: cooling season, long days
SPEC = FleetSpec(nodes=3, interval_s=300, seed=7)

# Clean values that may score critical because the physics says so: none with these templates.
# (Add {datastream: reason} here, and to docs/datamodels.md, if a template is ever tightened.)
EXPECTED_CRITICAL: dict[str, str] = {}

MODEL_BY_PREFIX = (
    ("/otherm-data/", "gshp"),
    ("/INV", "pv-inverter"),
    ("/WX", "weather-station"),
    ("/B1/M", "energy-meter"),
)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(SAMPLES)


@cache
def weather(name: str) -> WeatherSeries:
    if name == "constant":
        # a bright, mild afternoon all year: inverters at work, heat pumps idle or heating lightly
        return WeatherSeries(
            "constant", "constant", 0.0, 0.0, 0.0, (Weather(12.0, 55.0, 700.0, 600.0, 120.0, 4.0, 1013.0),) * YEAR_HOURS
        )
    if name == "synthetic":
        return synthetic_weather()
    path = default_tmy_path()
    if path is None:
        pytest.skip("pvlib's TMY3 file is not installed")
    return load_tmy(path)


WEATHERS = ("constant", "synthetic", "tmy")


def _expected_model(source_id: str) -> str:
    return next(model for marker, model in MODEL_BY_PREFIX if marker in source_id)


class Rater:
    """Scores accepted samples the way the pipeline does: text through the conversion matrix,
    CUMULATIVE readings as a rate (cumulative_period_divisor) against the stream's last one."""

    def __init__(self) -> None:
        self.scorers: dict[str, Scorer] = {}
        self.rates: dict[tuple[int, str, str], RateState] = {}

    def score(self, d: Datum, template: DatastreamTemplate, value: float | str) -> Score | None:
        if template.qrating is None:
            return None
        scorer = self.scorers.get(template.identifier)
        if scorer is None:
            scorer = self.scorers[template.identifier] = Scorer(template.qrating)
        divisor = scorer.cumulative_period_divisor
        if template.period == "CUMULATIVE":
            # a raw register reading is no measure of quality: only its rate is scored
            assert divisor is not None, f"{template.identifier}: CUMULATIVE qrating needs a divisor"
            assert not isinstance(value, str)
            key = (d.node_id, d.source_id, template.identifier)
            outcome = next_rate(self.rates.get(key), d.created_ms, value, divisor)
            if outcome.new_state is not None:
                self.rates[key] = outcome.new_state
            if outcome.rate is None:
                assert outcome.reason == "qrating.first_value", (key, outcome.reason)
                return None
            return scorer.score(outcome.rate)
        return scorer.score_sample(value)  # raises for a text missing from the matrix


def _check_clean(catalog: Catalog, datums: Iterator[Datum]) -> Counter[tuple[str, str]]:
    """Every datum validates whole; returns (datastream, quality) counts of the scores."""
    rater = Rater()
    qualities: Counter[tuple[str, str]] = Counter()
    n = 0
    for d in datums:
        n += 1
        result = validate(d, catalog)
        assert result.rejections == [], (d, result.rejections)
        assert result.accepted is d
        assert result.datamodel == _expected_model(d.source_id), d.source_id
        props = [name for _, name, _ in d.samples()]
        assert sorted(result.datastreams) == sorted(props), d  # every sample mapped
        for kind, name, value in d.samples():
            template = result.datastreams[name]
            assert kind in KINDS_FOR_PERIOD[template.period], (name, kind, template.period)
            score = rater.score(d, template, value)
            if score is None:
                continue
            qualities[(template.identifier, score.quality)] += 1
            if score.quality == "critical":
                assert template.identifier in EXPECTED_CRITICAL, (d, name, value, score)
    assert n > 0
    return qualities


# ---- bindings --------------------------------------------------------------------------------


def test_every_simulated_source_is_bound_whatever_the_fleet_size(catalog: Catalog) -> None:
    spec = FleetSpec(
        nodes=12, meters_per_node=11, inverters_per_node=10, weather_stations_per_node=2, heat_pumps_per_node=2
    )
    fleet = Fleet(spec)
    for node, source in [*fleet.source_ids, *Fleet(dataclasses.replace(spec, nodes=1, first_node_id=4711)).source_ids]:
        resolved = catalog.resolve(node, source)
        assert resolved is not None, source
        assert resolved.datamodel.identifier == _expected_model(source), source


# ---- two days of a 3-node fleet, clean -------------------------------------------------------


@pytest.mark.parametrize("start_ms", [DEFAULT_START_MS, JUL_1_2024], ids=["january", "july"])
@pytest.mark.parametrize("wx", WEATHERS)
def test_clean_fleet_validates_and_scores_never_critical(catalog: Catalog, wx: str, start_ms: int) -> None:
    spec = dataclasses.replace(SPEC, start_ms=start_ms)
    fleet = Fleet(spec, weather(wx))
    qualities = _check_clean(catalog, fleet.datums_between(start_ms, start_ms + 2 * DAY))
    scored = {ds for ds, _ in qualities}
    # the CUMULATIVE rate (Wh per hour = W) and the status matrices were really exercised
    assert {
        "energy.meter.wattHours",
        "energy.meter.mode",
        "energy.meter.voltage",
        "pv.inverter.state",
        "gshp.mode",
        "gshp.loadsideHeat",
    } <= scored
    assert all(q != "critical" for _, q in qualities)


@pytest.mark.parametrize("wx", ["synthetic", "tmy"])
def test_a_whole_year_never_scores_critical(catalog: Catalog, wx: str) -> None:
    """Coarse (every 4 h) but through every season: the thresholds fit the whole climate."""
    spec = FleetSpec(nodes=1, interval_s=4 * 3600, seed=3)
    fleet = Fleet(spec, weather(wx))
    _check_clean(catalog, fleet.datums_between(DEFAULT_START_MS, DEFAULT_START_MS + 366 * DAY))


def test_every_emitted_status_is_in_its_conversion_matrix(catalog: Catalog) -> None:
    seen: dict[str, set[str]] = {}
    for start in (DEFAULT_START_MS, JUL_1_2024, JUL_1_2024 - 60 * DAY):  # heat, cool, idle
        fleet = Fleet(dataclasses.replace(SPEC, start_ms=start, interval_s=1800))
        for d in fleet.datums_between(start, start + 2 * DAY):
            result = validate(d, catalog)
            for name, text in d.s.items():
                seen.setdefault(result.datastreams[name].identifier, set()).add(text)
    assert seen["energy.meter.mode"] == {"auto"}
    assert seen["pv.inverter.state"] == {"sleeping", "mppt"}
    assert seen["gshp.mode"] == {"heating", "cooling", "idle"}
    for ident, texts in seen.items():
        found = catalog.datastream(ident)
        assert found is not None
        qrating = found[1].qrating
        assert qrating is not None and qrating.conversion_matrix is not None, ident
        assert texts <= set(qrating.conversion_matrix), ident


def test_meter_energy_rate_is_the_average_power(catalog: Catalog) -> None:
    found = catalog.datastream("energy.meter.wattHours")
    assert found is not None
    template = found[1]
    assert template.period == "CUMULATIVE"
    assert template.qrating is not None and template.qrating.cumulative_period_divisor == 3600
    fleet = Fleet(dataclasses.replace(SPEC, nodes=1))
    rater = Rater()
    prev: Datum | None = None
    for d in fleet.datums_between(DEFAULT_START_MS, DEFAULT_START_MS + 6 * HOUR):
        if d.source_id != "/S1/B1/M1":
            continue
        score = rater.score(d, template, d.a["wattHours"])
        if prev is None:
            assert score is None
        else:
            assert score is not None
            assert score.value_scored == pytest.approx((prev.i["watts"] + d.i["watts"]) / 2)
            assert score.quality in ("ideal", "desired")
        prev = d


# ---- faults ------------------------------------------------------------------------------------


def test_every_injected_fault_is_refused(catalog: Catalog) -> None:
    """bad_ratio replaces one value by its FAULT_VALUES entry: each breaks the schema of its
    datastream, so validation refuses exactly that sample and keeps the rest of the datum."""
    t0, t1 = DEFAULT_START_MS, DEFAULT_START_MS + 2 * DAY
    wx = weather("synthetic")
    clean = list(Fleet(SPEC, wx).datums_between(t0, t1))
    dirty = list(Fleet(dataclasses.replace(SPEC, bad_ratio=0.05), wx).datums_between(t0, t1))
    assert len(clean) == len(dirty)
    faults: Counter[str] = Counter()
    for c, d in zip(clean, dirty, strict=True):
        result = validate(d, catalog)
        if c == d:
            assert result.rejections == []
            continue
        (name,) = [k for k in c.i if c.i[k] != d.i[k]]
        assert d.i[name] == FAULT_VALUES[name]
        faults[name] += 1
        assert [(r.rule, r.property) for r in result.rejections] == [("sample.schema", name)]
        assert result.accepted is not None and name not in result.accepted.i
        assert dict(result.accepted.a) == dict(d.a) and dict(result.accepted.s) == dict(d.s)
    assert 0.03 * len(clean) < sum(faults.values()) < 0.07 * len(clean)
    assert set(faults) == set(FAULT_VALUES)  # every fault kind was drawn and refused


def test_fault_values_break_the_schema_on_every_device_that_sends_them(catalog: Catalog) -> None:
    fleet = Fleet(dataclasses.replace(SPEC, nodes=1))
    for d in fleet.datums_between(DEFAULT_START_MS + 12 * HOUR, DEFAULT_START_MS + 12 * HOUR + 1):
        for name in d.i:
            if name not in FAULT_VALUES:
                continue
            bad = d.with_samples({**d.i, name: FAULT_VALUES[name]}, d.a, d.s)
            result = validate(bad, catalog)
            assert [(r.rule, r.property) for r in result.rejections] == [("sample.schema", name)]
