from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from pathlib import Path

import pytest

from processors.datum import Datum, check_envelope, source_id_problem
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
from tests.samples import OTHERM_FIELDS

HOUR = 3_600_000
DAY = 24 * HOUR
JUL_1_2024 = 1_719_792_000_000  # 2024-07-01T00:00:00Z


def datums_at(fleet: Fleet, t_ms: int) -> list[Datum]:
    """The datums created exactly at t_ms: one per device on a sample instant, else none."""
    return list(fleet.datums_between(t_ms, t_ms + 1))


def constant_weather(weather: Weather) -> WeatherSeries:
    """The same weather all year."""
    return WeatherSeries("constant", "constant", 0.0, 0.0, 0.0, (weather,) * YEAR_HOURS)


def _streams(datums: list[Datum]) -> dict[tuple[int, str], list[Datum]]:
    out: dict[tuple[int, str], list[Datum]] = defaultdict(list)
    for d in datums:
        out[d.stream].append(d)
    return out


@pytest.fixture(scope="module")
def day_of_fleet() -> tuple[Fleet, list[Datum]]:
    fleet = Fleet(FleetSpec(nodes=3, interval_s=300, seed=7))
    return fleet, list(fleet.datums_between(DEFAULT_START_MS, DEFAULT_START_MS + 2 * DAY))


# ---- determinism --------------------------------------------------------------------------


def test_same_seed_same_datums_and_order_does_not_matter() -> None:
    spec = FleetSpec(nodes=2, interval_s=60, seed=42)
    t0, t1 = DEFAULT_START_MS, DEFAULT_START_MS + 6 * HOUR
    a = list(Fleet(spec).datums_between(t0, t1))
    fleet = Fleet(spec)
    late = list(fleet.datums_between(t0 + 3 * HOUR, t1))  # jump ahead first
    early = list(fleet.datums_between(t0, t0 + 3 * HOUR))  # then rewind
    assert a == early + late
    assert datums_at(fleet, t0 + 2 * HOUR) == [d for d in a if d.created_ms == t0 + 2 * HOUR]


def test_different_seed_differs() -> None:
    t0 = DEFAULT_START_MS + 12 * HOUR
    a = datums_at(Fleet(FleetSpec(nodes=1, seed=1)), t0)
    b = datums_at(Fleet(FleetSpec(nodes=1, seed=2)), t0)
    assert [d.source_id for d in a if "otherm" not in d.source_id] == [
        d.source_id for d in b if "otherm" not in d.source_id
    ]
    assert a != b


def test_time_ordered_on_the_grid_and_half_open(day_of_fleet: tuple[Fleet, list[Datum]]) -> None:
    fleet, datums = day_of_fleet
    created = [d.created_ms for d in datums]
    assert created == sorted(created)
    assert created[0] == DEFAULT_START_MS
    assert created[-1] == DEFAULT_START_MS + 2 * DAY - 300_000
    assert all((c - DEFAULT_START_MS) % 300_000 == 0 for c in created)
    assert len(datums) == 3 * 5 * (2 * DAY // 300_000)
    assert datums_at(fleet, DEFAULT_START_MS + 1) == []  # off the grid
    assert datums_at(fleet, DEFAULT_START_MS - 300_000) == []  # before the start
    assert sorted({d.created_ms for d in fleet.datums_between(DEFAULT_START_MS + 1, DEFAULT_START_MS + 600_001)}) == [
        DEFAULT_START_MS + 300_000,
        DEFAULT_START_MS + 600_000,
    ]


# ---- datum validity ------------------------------------------------------------------------


def test_datums_are_valid(day_of_fleet: tuple[Fleet, list[Datum]]) -> None:
    fleet, datums = day_of_fleet
    assert len(set(fleet.source_ids)) == len(fleet.source_ids) == 15
    for node, source in fleet.source_ids:
        assert source_id_problem(source) is None
        assert len(source) <= 64 and "+" not in source and "#" not in source
        assert 1 <= node <= 3
    now = DEFAULT_START_MS + 3 * DAY
    for d in datums:
        kept, problems = check_envelope(d, now)
        assert kept == d and problems == []


def test_source_id_shapes() -> None:
    fleet = Fleet(
        FleetSpec(
            nodes=1,
            meters_per_node=2,
            inverters_per_node=2,
            weather_stations_per_node=2,
            heat_pumps_per_node=1,
            first_node_id=40,
        )
    )
    ids = [s for _, s in fleet.source_ids]
    assert ids[:6] == ["/S40/B1/M1", "/S40/B1/M2", "/S40/INV1", "/S40/INV2", "/S40/WX", "/S40/WX2"]
    assert ids[6].startswith("/otherm-data/") and len(ids[6]) == len("/otherm-data/") + 36


# ---- physics -------------------------------------------------------------------------------


def test_meter_energy_is_the_integral_of_power(day_of_fleet: tuple[Fleet, list[Datum]]) -> None:
    _, datums = day_of_fleet
    meters = {k: v for k, v in _streams(datums).items() if "/B1/M" in k[1]}
    assert len(meters) == 6
    for series in meters.values():
        wh = [d.a["wattHours"] for d in series]
        assert all(b > a for a, b in zip(wh, wh[1:], strict=False))
        integral = 0.0
        for p, q in zip(series, series[1:], strict=False):
            dt_h = (q.created_ms - p.created_ms) / HOUR
            integral += (p.i["watts"] + q.i["watts"]) / 2 * dt_h
        assert wh[-1] - wh[0] == pytest.approx(integral, rel=1e-6)
        for d in series:
            assert 200 < d.i["voltage"] < 240
            assert d.i["current"] == pytest.approx(d.i["watts"] / d.i["voltage"], rel=0.1)
            assert d.s == {"mode": "auto"}


def test_inverter_sleeps_at_night_and_produces_by_day() -> None:
    spec = FleetSpec(nodes=2, interval_s=600, seed=3, start_ms=JUL_1_2024)
    fleet = Fleet(spec, load_or_synthetic())
    datums = list(fleet.datums_between(JUL_1_2024, JUL_1_2024 + 3 * DAY))
    inverters = {k: v for k, v in _streams(datums).items() if "/INV" in k[1]}
    assert inverters
    for series in inverters.values():
        for d in series:
            local_h = ((d.created_ms - 5 * HOUR) % DAY) / HOUR  # EST
            if local_h < 4 or local_h > 22:
                assert d.i["watts"] == 0.0
                assert d.s["state"] == "sleeping"
            if d.s["state"] == "sleeping":
                assert d.i["watts"] == 0.0
            else:
                assert d.s["state"] == "mppt"
        assert max(d.i["watts"] for d in series) > 1000
        wh = [d.a["wattHours"] for d in series]
        assert all(b >= a for a, b in zip(wh, wh[1:], strict=False))
        assert wh[-1] > wh[0]


def test_inverter_follows_irradiance() -> None:
    def noon_watts(ghi: float) -> float:
        wx = constant_weather(Weather(20.0, 50.0, ghi, 0.0, ghi, 2.0, 1000.0))
        fleet = Fleet(
            FleetSpec(nodes=1, meters_per_node=0, weather_stations_per_node=0, heat_pumps_per_node=0, seed=5), wx
        )
        (d,) = datums_at(fleet, DEFAULT_START_MS)
        return d.i["watts"]

    assert noon_watts(0.0) == 0.0
    assert 0 < noon_watts(200.0) < noon_watts(400.0) < noon_watts(600.0)


def load_or_synthetic() -> WeatherSeries:
    path = default_tmy_path()
    return load_tmy(path) if path is not None else synthetic_weather()


def test_weather_station_stays_within_the_series_ranges() -> None:
    series = load_or_synthetic()
    ranges = series.ranges()
    fleet = Fleet(
        FleetSpec(nodes=1, meters_per_node=0, inverters_per_node=0, heat_pumps_per_node=0, interval_s=1800, seed=1),
        series,
    )
    datums = list(fleet.datums_between(DEFAULT_START_MS, DEFAULT_START_MS + 366 * DAY))
    assert len(datums) == 366 * 48
    # SolarNetwork names for two fields: wspeed (m/s), atm (Pa; the series holds mbar)
    field = {"wspeed": ("wind_speed", 1.0), "atm": ("pressure", 100.0)}
    for d in datums:
        assert set(d.i) == {"temperature", "humidity", "ghi", "dni", "dhi", "wspeed", "atm"}
        for name, value in d.i.items():
            wx_name, scale = field.get(name, (name, 1.0))
            lo, hi = ranges[wx_name]
            assert lo * scale - 1e-6 <= value <= hi * scale + 1e-6, (name, value, d.created_ms)
        assert d.i["ghi"] >= 0 and 0 <= d.i["humidity"] <= 100
    # winter colder than summer
    jan = [d.i["temperature"] for d in datums[: 31 * 48]]
    jul = [d.i["temperature"] for d in datums[182 * 48 : 213 * 48]]
    assert sum(jan) / len(jan) + 10 < sum(jul) / len(jul)


def _hp(datums: list[Datum]) -> list[Datum]:
    return [d for d in datums if d.source_id.startswith("/otherm-data/")]


def test_heat_pump_works_harder_when_colder() -> None:
    def mean_power(t_out: float) -> tuple[float, float]:
        wx = constant_weather(Weather(t_out, 60.0, 0.0, 0.0, 0.0, 3.0, 1000.0))
        fleet = Fleet(
            FleetSpec(
                nodes=4, meters_per_node=0, inverters_per_node=0, weather_stations_per_node=0, seed=11, interval_s=300
            ),
            wx,
        )
        hp = _hp(list(fleet.datums_between(DEFAULT_START_MS, DEFAULT_START_MS + DAY)))
        return (
            sum(d.i["heatpump_power"] + d.i["heatpump_aux"] for d in hp) / len(hp),
            sum(d.i["heat_flow_rate"] for d in hp) / len(hp),
        )

    p_mild, q_mild = mean_power(8.0)
    p_cold, q_cold = mean_power(-5.0)
    p_frost, q_frost = mean_power(-15.0)
    assert 0 < p_mild < p_cold < p_frost
    assert 0 < q_mild < q_cold <= q_frost
    p_warm, _ = mean_power(18.0)
    assert p_warm < p_mild


def test_heat_pump_fields_are_consistent(day_of_fleet: tuple[Fleet, list[Datum]]) -> None:
    _, datums = day_of_fleet
    hp = _hp(datums)
    assert hp
    expected_i = set(OTHERM_FIELDS) - {"loadside_heat", "sourceside_heat"}  # the two meters are in d.a
    wx = {d.created_ms: d.i["temperature"] for d in datums if d.source_id.endswith("/WX")}
    for d in hp:
        assert set(d.i) == expected_i
        assert set(d.a) == {"loadside_heat", "sourceside_heat"}
        assert d.i["outdoor_temperature"] == wx[d.created_ms]
        assert d.i["source_tempdiff"] == pytest.approx(d.i["source_supplytemp"] - d.i["source_returntemp"])
        assert d.i["compressor_stage"] in (0.0, 1.0, 2.0)
        assert (d.i["compressor_stage"] == 0.0) == (d.s["mode"] == "idle")
        if d.s["mode"] == "heating":
            assert d.i["load_supplytemp"] > d.i["load_returntemp"]
            assert d.i["source_supplytemp"] > d.i["source_returntemp"]
            assert d.i["heat_flow_rate"] > d.i["heatpump_power"] > 0  # COP > 1
            assert d.i["sourcefluid_flowrate"] > 0
            assert -5 < d.i["source_supplytemp"] < 20
        assert 15 < d.i["tstat_temp"] < 25
    for series in _streams(hp).values():
        for name in ("loadside_heat", "sourceside_heat"):
            values = [d.a[name] for d in series]
            assert all(b >= a for a, b in zip(values, values[1:], strict=False))
        assert series[-1].a["loadside_heat"] > series[-1].a["sourceside_heat"] > 0


def test_bad_ratio_injects_out_of_range_values_only_where_drawn() -> None:
    spec = FleetSpec(nodes=2, interval_s=600, seed=9)
    t0, t1 = DEFAULT_START_MS, DEFAULT_START_MS + DAY
    clean = list(Fleet(spec).datums_between(t0, t1))
    dirty = list(Fleet(dataclasses.replace(spec, bad_ratio=0.2)).datums_between(t0, t1))
    assert len(clean) == len(dirty)
    changed = [(c, d) for c, d in zip(clean, dirty, strict=True) if c != d]
    assert 0.1 * len(clean) < len(changed) < 0.3 * len(clean)
    for c, d in changed:
        diff = [k for k in c.i if c.i[k] != d.i[k]]
        assert len(diff) == 1
        assert d.i[diff[0]] == FAULT_VALUES.get(diff[0], -999.0)
        assert c.a == d.a and c.s == d.s
    assert all(math.isfinite(v) for d in dirty for v in d.i.values())


def test_spec_validation() -> None:
    with pytest.raises(ValueError):
        FleetSpec(nodes=-1)
    with pytest.raises(ValueError):
        FleetSpec(bad_ratio=1.5)
    with pytest.raises(ValueError):
        FleetSpec(interval_s=0)


def test_leap_day_repeats_feb_28() -> None:
    series = load_or_synthetic()
    feb28 = 1_709_078_400_000  # 2024-02-28T00:00Z
    for h in range(0, 24, 5):
        assert series.at(feb28 + DAY + h * HOUR) == series.at(feb28 + h * HOUR)
    # March 1st of a leap year is March 1st of the typical year
    assert series.at(feb28 + 2 * DAY) == series.at(1_677_628_800_000)  # 2023-03-01T00:00Z


# ---- the TMY loader ------------------------------------------------------------------------

_HEADER = (
    "Date (MM/DD/YYYY),Time (HH:MM),ETR (W/m^2),GHI (W/m^2),DNI (W/m^2),DHI (W/m^2),"
    "Dry-bulb (C),RHum (%),Pressure (mbar),Wspd (m/s)\n"
)


def _write_tmy(path: Path) -> None:
    lines = ['999999,"TEST STATION",XX,-5.0,40.0,-75.0,100\n', _HEADER]
    for day in (1, 2):
        for hour in range(1, 25):
            ghi = max(0, 600 - 100 * abs(hour - 13)) if 7 <= hour <= 19 else 0
            temp = -2.0 + hour * 0.5 + day
            pressure = -9900 if (day, hour) == (1, 10) else 1000 + hour
            lines.append(
                f"01/{day:02d}/1999,{hour:02d}:00,0,{ghi},{ghi // 2},{ghi // 3},"
                f"{temp:.1f},{50 + hour},{pressure},{hour / 4:.2f}\n"
            )
    path.write_text("".join(lines), encoding="utf-8")


def test_load_tmy_small_file(tmp_path: Path) -> None:
    path = tmp_path / "tiny.csv"
    _write_tmy(path)
    series = load_tmy(path)
    assert series.tz_offset_h == -5.0
    assert series.latitude == 40.0 and series.station == "TEST STATION"
    assert "999999" in series.source
    # Row "01/01 13:00" (hour ending, EST) sits at 12:30 EST = 17:30 UTC, in any year.
    for year_start in (1_704_067_200_000, 1_893_456_000_000):  # 2024, 2030
        at = series.at(year_start + 17 * HOUR + 30 * 60_000)
        assert at.ghi == 600 and at.dni == 300 and at.dhi == 200
        assert at.temperature == pytest.approx(-2.0 + 6.5 + 1)
        assert at.humidity == 63 and at.wind_speed == pytest.approx(13 / 4)
    # halfway between 12:30 and 13:30 EST: interpolated
    mid = series.at(1_704_067_200_000 + 18 * HOUR)
    assert mid.ghi == pytest.approx(550)
    assert mid.temperature == pytest.approx(-2.0 + 6.75 + 1)
    # the missing pressure (-9900) at 10:00 is filled from its neighbours
    filled = series.at(1_704_067_200_000 + 14 * HOUR + 30 * 60_000)
    assert filled.pressure == pytest.approx(1010)


def test_load_tmy_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    path.write_text("a,b,c\nx,y,z\n1,2,3\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not a TMY3 file"):
        load_tmy(path)
    bad = tmp_path / "bad.csv"
    bad.write_text('1,"S",X,0,0,0,0\n' + _HEADER + "13/45/1999,01:00,0,0,0,0,0,0,0,0\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.csv:3"):
        load_tmy(bad)


def test_load_tmy_pvlib_file() -> None:
    path = default_tmy_path()
    if path is None:
        pytest.skip("pvlib is not installed")
    assert path.name == "723170TYA.CSV"
    series = load_tmy(path)
    assert series.tz_offset_h == -5.0
    assert "GREENSBORO" in series.station
    r = series.ranges()
    assert -30 < r["temperature"][0] < 0 < 30 < r["temperature"][1] < 45
    assert r["ghi"][0] == 0 and 800 < r["ghi"][1] < 1200
    assert 900 < r["pressure"][0] < r["pressure"][1] < 1050
    assert r["humidity"][0] >= 0 and r["humidity"][1] <= 100
    # midnight in Greensboro is dark, early-afternoon in June is not
    assert series.at(1_718_409_600_000 + 5 * HOUR).ghi == 0  # 2024-06-15 00:00 EST
    assert series.at(1_718_409_600_000 + 18 * HOUR).ghi > 100  # 13:00 EST
    other = default_tmy_path("703165TY.csv")
    assert other is not None and load_tmy(other).tz_offset_h == -9.0


def test_synthetic_weather_is_plausible() -> None:
    series = synthetic_weather()
    assert "synthetic" in series.source
    r = series.ranges()
    assert r["ghi"][0] == 0 and 900 < r["ghi"][1] < 1100
    assert -10 < r["temperature"][0] < 5 and 25 < r["temperature"][1] < 40
    assert series.at(1_718_409_600_000 + 5 * HOUR).ghi == 0
    assert series.at(1_718_409_600_000 + 17 * HOUR).ghi > 700


def test_default_tmy_path_without_pvlib(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert default_tmy_path() is None
    assert "synthetic" in Fleet(FleetSpec(nodes=1)).weather.source
